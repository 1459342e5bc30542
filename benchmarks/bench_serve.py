"""Load figure of ``lesion-factorizer serve``: jobs per hour and the server's added latency per job.

    .venv/bin/python benchmarks/bench_serve.py [--jobs 3] [--clients 4] [--threads 2] [--task stroke]

In one sitting, on the bundled sample case of ``--task`` with its demo model (default settings):

1. local — ``lesion-factorizer segment`` run ``--jobs`` times, each a fresh process (what a
   laptop without a server pays: start, model load, segment, write);
2. server, one client — the same case ``--jobs`` times through a server on localhost (one CPU
   device), each job timed from submit to the result unpacked (upload, queue, segment, archive,
   download); the first job pays the worker start and model load, the others find them warm;
3. server, ``--clients`` clients at once, ``--jobs`` jobs each: throughput in jobs per hour.

Printed: wall seconds per job (each run), medians, the warm server job over the local run
(ratio), what each path adds around the segmentation itself (wall minus report.json
``timings_s.total``: process start and model load locally; upload, queue, archive and download
on the server), and jobs per hour. Timings on a machine shared with other work vary; compare only
numbers from the same sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LesionFactorizerLib.core.errors import UserError  # noqa: E402
from LesionFactorizerLib.core.reportspec import read_report  # noqa: E402
from LesionFactorizerLib.serve.client import Client  # noqa: E402
from LesionFactorizerLib.core.tasks import get_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--task", default="stroke")
    args = parser.parse_args()
    task = get_task(args.task)
    samples = REPO / "Resources" / "SampleData"
    inputs = {n: str(samples / f"{task.name}_{n}.nii.gz") for n in task.input_names
              if (samples / f"{task.name}_{n}.nii.gz").exists()}
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    cli = [sys.executable, "-m", "LesionFactorizerLib", "--threads", str(args.threads)]

    local = []
    for i in range(args.jobs):
        t0 = time.monotonic()
        subprocess.run([*cli, "segment", "--task", task.name, *[a for n, p in inputs.items() for a in ("-i", f"{n}={p}")],
                        "-o", str(tmp / f"local{i}"), "--progress", "none"], check=True, capture_output=True)
        local.append(time.monotonic() - t0)
        print(f"local segment {i + 1}: {local[-1]:.1f} s", flush=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*cli, "serve", "--port", str(port), "--work-dir", str(tmp / "jobs"),
                               "--max-jobs-per-client", str(args.jobs * args.clients)],
                              start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        client = Client(f"http://127.0.0.1:{port}")
        while True:
            try:
                client.check()
                break
            except UserError:
                time.sleep(0.3)
        remote = []
        for i in range(args.jobs):
            t0 = time.monotonic()
            client.run(task.name, inputs, {}, tmp / f"remote{i}")
            remote.append(time.monotonic() - t0)
            print(f"server job {i + 1} (one client): {remote[-1]:.1f} s", flush=True)

        def one_client(k: int) -> None:
            for i in range(args.jobs):
                client.run(task.name, inputs, {}, tmp / f"c{k}-{i}")

        t0 = time.monotonic()
        threads = [threading.Thread(target=one_client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        burst = time.monotonic() - t0
        info = client.check()["devices"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    warm = statistics.median(remote[1:]) if len(remote) > 1 else remote[0]

    def added(prefix: str, walls: list, first: int = 0) -> float:
        """Median of wall minus the run's own segmentation time (report.json), from job ``first`` on."""
        return statistics.median(walls[i] - read_report(tmp / f"{prefix}{i}").total_seconds
                                 for i in range(first, len(walls)))

    print(f"\n{task.name} sample, {args.threads} torch threads, one CPU device; machine load at the end: "
          f"{os.getloadavg()[0]:.1f}")
    print(f"local segment (fresh process each): median {statistics.median(local):.1f} s")
    print(f"server job, first (worker start + model load): {remote[0]:.1f} s; warm median {warm:.1f} s")
    print(f"warm server job / local segment: {warm / statistics.median(local):.2f}")
    print(f"added around the segmentation itself (median wall - report total): local {added('local', local):.2f} s, "
          f"server (warm jobs) {added('remote', remote, min(1, len(remote) - 1)):.2f} s")
    n = args.jobs * args.clients
    print(f"{args.clients} clients x {args.jobs} jobs: {n} jobs in {burst:.1f} s = {3600 * n / burst:.0f} jobs/hour "
          f"(device: {info[0]['jobs_done']} jobs, model loads {info[0]['model_loads']})")


if __name__ == "__main__":
    main()
