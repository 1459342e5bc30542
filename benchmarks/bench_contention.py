"""How the demo's three cases slow down when the CPU is shared (issue: "inference that survives a
busy machine").

    .venv/bin/python benchmarks/bench_contention.py               # quiet, then beside 2 busy processes
    .venv/bin/python benchmarks/bench_contention.py --busy 4 --repeats 2

Each measurement runs ``lesion-factorizer demo`` (the tumour, stroke and MS sample cases with their
bundled models) in a fresh process and takes its wall time. The contended run starts ``--busy``
CPU-bound competitors (a Python spin loop each, at the same priority as the demo, like a browser or a
PACS viewer beside Slicer) before the demo and stops them after it. Reported: best-of wall time quiet
and contended, their ratio (the slowdown), and the load average seen. Quiet and contended runs are
interleaved so slow drift of the machine's load hits both.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
SPIN = "while True: pass"


def run_demo(out: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    # Run from outside the source tree: the installed package maps ``training`` into the library.
    subprocess.run([sys.executable, "-m", "LesionFactorizerLib", *extra, "demo", "--out", str(out)],
                   cwd=out.parent, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def contended(out: Path, busy: int, extra: list[str]) -> float:
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
    try:
        time.sleep(0.5)  # let the competitors get scheduled first
        return run_demo(out, extra)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=2, help="CPU-bound competing processes (default 2)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cli-args", default="", help="global CLI options for the demo, e.g. '--threads 1'")
    args = parser.parse_args()
    extra = args.cli_args.split()
    quiet, busy, loads = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-contention-") as tmp:
        out = Path(tmp) / "demo"
        run_demo(out, extra)  # warm-up: file cache, imports
        for _ in range(args.repeats):
            loads.append(os.getloadavg()[0])
            quiet.append(run_demo(out, extra))
            busy.append(contended(out, args.busy, extra))
            loads.append(os.getloadavg()[0])
    print(f"demo (3 cases), {os.cpu_count()} CPUs, best of {args.repeats}; 1-min load average seen "
          f"{min(loads):.2f}-{max(loads):.2f}")
    print(f"quiet:                 {min(quiet):7.1f} s   (all: {', '.join(f'{t:.1f}' for t in quiet)})")
    print(f"with {args.busy} busy processes: {min(busy):7.1f} s   (all: {', '.join(f'{t:.1f}' for t in busy)})")
    print(f"slowdown: {min(busy) / min(quiet):.2f}x")


if __name__ == "__main__":
    main()
