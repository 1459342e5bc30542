"""How the network runs at inference — its *backend* — and the policy that picks one.

Backends (``--backend``):

- ``eager``: plain PyTorch. Always available; the reference every other backend is checked against.
- ``compile``: ``torch.compile`` (TorchInductor). Needs a C++ compiler on the CPU. Compiling takes
  minutes the first time; TorchInductor's code cache lives in :func:`cache_dir` so later runs (and
  later processes) reuse it, and the run says so in its progress message before it starts.
- ``onnx``: the network exported to ONNX (``torch.onnx.export``, dynamo exporter) and run by ONNX
  Runtime; needs the ``export`` extra (onnx, onnxruntime, onnxscript). The exported file is cached
  in :func:`cache_dir`, keyed by the weights and the window shape.
- ``auto`` (default): the backend that *measured* fastest for this network, window shape, device and
  thread count on this machine (:func:`calibrate`, run by ``lesion-factorizer
  calibrate MODEL`` or ``benchmarks/bench_model.py --backends``), else eager. A backend
  is recorded as the winner only if it beat eager on the same run by :data:`MIN_GAIN` and matched
  its outputs; so a clinician's first click never pays a compile nobody has shown to pay off.

Every non-eager backend is checked once per run against eager on the first window batch
(:meth:`Dispatch.forward`): beyond :data:`RUN_TOL` the run falls back to eager with a warning, never
to silently different logits. The components pass (NMF factor capture) always runs eager: it
stores per-layer maps as a side effect, which compiled or exported graphs do not reproduce.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import locale
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from LesionFactorizerLib.core.settings import BACKENDS
from LesionFactorizerLib.core.usercache import (cache_dir, file_record, make_own_folder, not_own, read_record,
                                           verified_file, write_record)

MIN_GAIN = 1.1     # a backend must be ≥10 % faster than eager, measured on the same run, to be chosen
TEST_TOL = 1e-4    # calibration: max |backend − eager| on the calibration batch (float32 logits)
RUN_TOL = 1e-3     # a run's first-batch check (real data, larger logits): beyond it, eager instead
RECORDS = "backends.json"


def unavailable(name: str, device_type: str = "cpu") -> str | None:
    """Why backend ``name`` cannot run here (one line), or None when it can."""
    if name == "eager":
        return None
    if name == "compile":
        import torch

        if not hasattr(torch, "compile"):
            return "this torch has no torch.compile"
        if device_type == "mps":
            return "torch.compile does not support Apple MPS here"
        if device_type == "cpu":
            cxx = os.environ.get("CXX") or next((c for c in ("g++", "clang++", "c++", "cl") if shutil.which(c)), None)
            if not cxx or not shutil.which(cxx):
                return "torch.compile needs a C++ compiler for the CPU (none found: install g++ or clang++)"
        # torch's compiler reads its kernel templates in the locale's encoding and fails on the
        # UTF-8 bytes in them otherwise (a C/POSIX locale, or one a library switched to at runtime)
        encoding = locale.getpreferredencoding(False)
        if not sys.flags.utf8_mode and codecs.lookup(encoding).name != "utf-8":
            return (f"torch.compile needs a UTF-8 locale, this process has {encoding}; set LANG=C.UTF-8 "
                    "or PYTHONUTF8=1")
        return None
    if name == "onnx":
        if device_type != "cpu":
            return "the ONNX Runtime backend runs on the CPU only"
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            return "ONNX Runtime is not installed (pip install 'lesion-factorizer[export]')"
        return None
    return f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}"


# ------------------------------------------------------------------------------------------------
# What a measurement is about, and where it is kept
# ------------------------------------------------------------------------------------------------
def graph_settings(model) -> list:
    """Inference-time knobs that change the computed graph (NMF iterations/rank/solver/skips)."""
    layers = model.nmf_layers() if hasattr(model, "nmf_layers") else {}
    return [[name, w.nmf.iters, w.nmf.rank, w.nmf.solver, bool(w.skip)] for name, w in sorted(layers.items())]


def speed_key(model, shape: tuple[int, ...], device_type: str, threads: int) -> str:
    """What a speed measurement depends on: the architecture (not the weights), its NMF settings,
    the window batch shape, device, threads, torch and the processor."""
    import platform

    import torch

    config = getattr(model, "config", None) or {"class": type(model).__name__}
    facts = [config, graph_settings(model), list(shape), device_type, threads, torch.__version__,
             platform.machine(), platform.processor(), os.cpu_count()]
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def weights_digest(model) -> str:
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def load_records() -> dict:
    """The measurements, ``{key: record}``: only from a file that is the user's own and parses
    strictly, and only records whose ``winner`` is a backend; anything else is ignored (``auto``
    then runs eager)."""
    path = cache_dir() / RECORDS
    if not path.exists() or not_own(path):
        return {}
    try:
        records = read_record(path)
    except (OSError, ValueError):
        return {}
    return {key: record for key, record in records.items()
            if isinstance(record, dict) and record.get("winner") in BACKENDS}


def save_record(key: str, record: dict) -> None:
    """Adds one measurement to the records file (:func:`usercache.write_record`); not written into
    a cache folder that is not the user's own (it would not be read back)."""
    records = load_records()
    records[key] = record
    folder = cache_dir()
    make_own_folder(folder)
    if not not_own(folder):
        write_record(folder / RECORDS, records)


class UntrustedCache(RuntimeError):
    """A cache folder this backend would load code from that another account could have written."""


def _own_folder(folder) -> None:
    """Creates ``folder`` as the user's own, or raises :class:`UntrustedCache` saying why it is not."""
    make_own_folder(Path(folder))
    if why := not_own(Path(folder)):
        raise UntrustedCache(f"its cache is not safe to load code from: {why}")


def choose(requested: str, model, shape: tuple[int, ...], device_type: str, threads: int) -> tuple[str, str | None]:
    """The backend to run and, when it differs from what was asked, a one-line warning why."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}")
    if requested == "auto":
        record = load_records().get(speed_key(model, shape, device_type, threads)) or {}
        winner = record.get("winner", "eager")
        return (winner, None) if unavailable(winner, device_type) is None else ("eager", None)
    why = unavailable(requested, device_type)
    if why:
        return "eager", f"backend {requested} is not available ({why}); running eager PyTorch"
    return requested, None


# ------------------------------------------------------------------------------------------------
# Runners
# ------------------------------------------------------------------------------------------------
@dataclass
class Runner:
    """A prepared network: ``runner(batch)`` → logits, for batches of at most ``shape[0]`` windows
    (smaller last batches are zero-padded to the prepared shape, so nothing recompiles)."""

    name: str
    shape: tuple[int, ...]
    call: Callable
    checked: bool = field(default=False)

    def __call__(self, batch):
        import torch

        n = batch.shape[0]
        if self.name != "eager" and n < self.shape[0]:
            pad = batch.new_zeros((self.shape[0] - n, *batch.shape[1:]))
            return self.call(torch.cat([batch, pad]))[:n]
        return self.call(batch)


def _inductor_cache() -> None:
    """TorchInductor's on-disk caches (compiled kernels, FX graphs) under our cache folder, so a
    compiled network survives the process; the user's own ``TORCHINDUCTOR_CACHE_DIR`` wins. Either
    folder must be the user's own (Inductor loads the compiled code it finds there), else
    :class:`UntrustedCache`."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
    _own_folder(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
    except (ImportError, AttributeError):
        pass


def _onnx_session(model, shape: tuple[int, ...], notify: Callable[[str], None]):
    import onnxruntime as ort
    import torch

    from LesionFactorizerLib.nn import window_op

    folder = cache_dir() / "onnx"
    key = hashlib.sha256(json.dumps([getattr(model, "config", None), graph_settings(model), list(shape),
                                     weights_digest(model), torch.__version__],
                                    sort_keys=True, default=str).encode()).hexdigest()[:24]
    _own_folder(folder)
    path, record = folder / f"{key}.onnx", folder / f"{key}.json"
    if verified_file(record, own=True)[0] != path:   # missing, or damaged/swapped: exported again
        notify(f"exporting the network to ONNX for {tuple(shape[2:])} windows (once; cached in {folder})")
        tmp = folder / f"{key}.{os.getpid()}.tmp.onnx"
        example = torch.zeros(shape)
        try:
            with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):  # the exporter prints progress
                program = torch.export.export(model, (example,), strict=True)
                torch.onnx.export(window_op.for_onnx(program), (example,), str(tmp), dynamo=True, verbose=False,
                                  external_data=False)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        write_record(record, file_record(path))
    notify(f"running the network with ONNX Runtime ({path.name} in {folder})")
    # ONNX Runtime is given the verified file alone: no custom-op library is ever registered, so a
    # model naming an unknown operator fails to load instead of running someone's code
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def call(batch):
        (out,) = session.run(None, {name: batch.detach().to("cpu", torch.float32).contiguous().numpy()})
        return torch.from_numpy(out)
    return call


def build(name: str, model, shape: tuple[int, ...], notify: Callable[[str], None] = lambda m: None) -> Runner:
    """A runner of ``model`` by backend ``name`` for window batches of ``shape`` (B, C, D, H, W)."""
    import torch

    shape = tuple(int(s) for s in shape)
    if name == "eager":
        return Runner("eager", shape, model, checked=True)
    if name == "compile":
        _inductor_cache()   # before anything imports torch._dynamo, which sets Inductor's default folder
        notify(f"compiling the network for {tuple(shape[2:])} windows with torch.compile: the first run on "
               f"this machine can take minutes (compiled code is cached in {os.environ['TORCHINDUCTOR_CACHE_DIR']})")
        return Runner("compile", shape, torch.compile(model, dynamic=False))
    if name == "onnx":
        return Runner("onnx", shape, _onnx_session(model, shape, notify))
    raise ValueError(f"unknown backend {name!r}")


def max_difference(runner: Runner, model, batch) -> float:
    import torch

    with torch.no_grad():
        return (runner(batch).float() - model(batch).float()).abs().max().item()


class Dispatch:
    """One inference run's backends (``pipeline.inference.run_inference`` holds one): a runner per
    model, prepared on its first logits-only batch and checked against eager on that batch.
    Warnings go to ``warnings``; :meth:`summary` names what ran (report.json ``backend``)."""

    def __init__(self, requested: str, batch_size: int, notify: Callable[[str], None] | None, warnings: list):
        self.requested, self.batch_size = requested, int(batch_size)
        self.notify = notify or (lambda message: None)
        self.warnings = warnings
        self.runners: dict[tuple, Runner] = {}
        self.used: list[str] = []

    def forward(self, model, batch):
        import torch

        key = (id(model), batch.device.type, tuple(batch.shape[1:]))
        runner = self.runners.get(key)
        if runner is None:
            shape = (self.batch_size, *batch.shape[1:])
            name, why = choose(self.requested, model, shape, batch.device.type, torch.get_num_threads())
            if why:
                self.warnings.append(why)
            try:
                runner = build(name, model, shape, self.notify)
            except Exception as exc:  # noqa: BLE001 — whatever fails while preparing, eager still runs
                why = str(exc) if isinstance(exc, UntrustedCache) else type(exc).__name__
                self.warnings.append(f"backend {name} could not be prepared ({why}); ran eager PyTorch")
                runner = build("eager", model, shape)
            self.runners[key] = runner
        if not runner.checked:  # once per run: the first batch through both, compared
            try:
                diff = max_difference(runner, model, batch)
                why = f"its logits differ from eager PyTorch by {diff:.2g}"
            except Exception as exc:  # noqa: BLE001
                diff, why = float("inf"), f"it failed: {type(exc).__name__}"
            if not diff <= RUN_TOL:
                self.warnings.append(f"backend {runner.name} was not used ({why}); ran eager PyTorch")
                runner = self.runners[key] = build("eager", model, runner.shape)
            runner.checked = True
        self._note(runner.name)
        return runner(batch)

    def used_eager(self) -> None:
        self._note("eager")

    def _note(self, name: str) -> None:
        if name not in self.used:
            self.used.append(name)

    def summary(self) -> str:
        """``eager``, ``compile``, ``onnx``, or e.g. ``eager+compile`` when the components pass ran
        eager and the others compiled (in the order they first ran)."""
        return "+".join(self.used) or "eager"


# ------------------------------------------------------------------------------------------------
# Calibration: measure every available backend on the same run, record only a winner
# ------------------------------------------------------------------------------------------------
def calibrate(model, shape: tuple[int, ...], device: str = "cpu", backends=("eager", "compile", "onnx"),
              repeats: int = 3, save: bool = True, notify: Callable[[str], None] = print) -> dict:
    """Times each available backend on one random batch of ``shape`` (best of ``repeats`` after a
    warm-up that includes compiling/exporting), checks it against eager, and records the fastest
    that is within :data:`TEST_TOL` and ≥ :data:`MIN_GAIN` × faster than eager (else eager) for
    ``auto``. Returns ``{"key", "winner", "results": {name: {"seconds", "setup_s", "max_diff"} or
    {"unavailable": why} or {"failed": message}}}``."""
    import torch

    model = model.eval().to(device)
    dev = torch.device(device)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dev)
    threads = torch.get_num_threads()
    key = speed_key(model, tuple(shape), dev.type, threads)
    results: dict = {}
    with torch.no_grad():
        reference = model(x).float()
        for name in backends:
            why = unavailable(name, dev.type)
            if why:
                results[name] = {"unavailable": why}
                continue
            try:
                t0 = time.perf_counter()
                runner = build(name, model, shape, notify)
                out = runner(x).float()  # warm-up: compiles / exports here
                setup = time.perf_counter() - t0
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    runner(x)
                    times.append(time.perf_counter() - t0)
            except Exception as exc:  # a backend that fails here is simply not chosen
                results[name] = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
                continue
            results[name] = {"seconds": min(times), "setup_s": setup,
                             "max_diff": (out - reference).abs().max().item()}
    eager = results.get("eager", {}).get("seconds")
    winner = "eager"
    if eager:
        fits = [(r["seconds"], n) for n, r in results.items()
                if n != "eager" and "seconds" in r and r["max_diff"] <= TEST_TOL and r["seconds"] * MIN_GAIN <= eager]
        if fits:
            winner = min(fits)[1]
    record = {"winner": winner, "results": results, "shape": list(shape), "device": dev.type, "threads": threads,
              "measured": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__}
    if save and eager:
        save_record(key, record)
    return {"key": key, **record}

