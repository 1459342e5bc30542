"""``batch`` in one process: the next case is read and prepared, and the previous one labelled and
written, while the networks run on the current one.

Three stages per case (:meth:`Segmenter.begin`, :meth:`~Segmenter.infer`, :meth:`~Segmenter.finish`):
the networks run on the calling (main) thread, so torch keeps the thread count the user or the
machine's load set for it and the networks are never touched by two threads at once; reading
and writing are SimpleITK, zlib and numpy, which release the GIL for the heavy parts, each on one
helper thread. The pipeline is bounded: while case *i* is in inference, only case *i+1* is read
ahead and only case *i−1* is still being written, so at most three cases are in memory.

Every case still ends in its own :class:`AtomicOutput` commit; cases are recorded (progress
events, summary rows) in list order, each as soon as its outputs are committed or it has failed;
its seconds are its latency, from the start of its reading.
On SIGINT/SIGTERM the case being written is finished (complete, committed) before the signal
ends the run; the case being read ahead is dropped once read (it wrote nothing).
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import Future
from typing import Callable

from LesionFactorizerLib.core.errors import UserError

# (index, case id, inputs, output folder, redo: replace our earlier result); record(index, status, error, seconds)
Item = tuple[int, str, dict, str, bool]
Record = Callable[[int, str, str, float], None]


def _failure(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    return f"unexpected: {type(exc).__name__}: {exc}"


def _on_thread(future: Future, fn, *args, name: str) -> None:
    """``fn(*args)`` on a new thread into ``future``, which the caller holds before the thread
    starts: a signal can come at any moment, and the main thread must then know whether a case is
    being written (and wait for it) or not (cancelled: it never starts). Not a daemon thread: the
    interpreter never finalizes under a thread still inside SimpleITK."""
    def work():
        if hasattr(signal, "pthread_sigmask"):
            # SIGINT/SIGTERM go to the main thread, whose waits they interrupt at once (a signal the
            # kernel hands to a helper thread would wait until the main thread woke up on its own)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:   # handed to the main thread, which decides
            future.set_exception(exc)

    threading.Thread(target=work, name=name).start()


class CasePipeline:
    """Runs a batch's cases through one Segmenter with reading, inference and writing overlapped.

    ``make_segmenter()`` builds the Segmenter (cheap, torch-free; the models load while the first
    case is read, on the main thread). ``overwrite``: replace existing results. ``overlap=False``
    runs the same stages one after the other (less memory: one case at a time)."""

    def __init__(self, make_segmenter: Callable, overwrite: bool = False, overlap: bool = True):
        self.make_segmenter = make_segmenter
        self.overwrite, self.overlap = overwrite, overlap
        self.segmenter = None

    def _begin(self, item: Item):
        from LesionFactorizerLib.pipeline.progress import Progress

        _, _, inputs, output, redo = item
        if self.segmenter is None:
            self.segmenter = self.make_segmenter()
        return self.segmenter.begin(inputs, output, self.overwrite or redo, Progress("none"))

    def run(self, items: list[Item], record: Record) -> None:
        ahead: Future | None = None    # case pos+1 being read and prepared
        behind: Future | None = None   # case pos−1 being labelled, written and recorded

        def write(staged, item: Item, t0: float) -> None:
            # recorded on the writer thread the moment it is committed (or failed); the main thread
            # records a case only after waiting for the previous one's writer, so the order holds
            try:
                self.segmenter.finish(staged)
                status, error = "done", ""
            except Exception as exc:   # one broken case must not stop the cohort
                status, error = "failed", _failure(exc)
            del staged
            record(item[0], status, error, time.monotonic() - t0)

        def settle_behind() -> None:
            nonlocal behind
            if behind is not None:
                behind.result()
                behind = None

        t0 = t_ahead = time.monotonic()
        try:
            for pos, item in enumerate(items):
                staged, error = None, ""
                try:
                    # the first case, or one after a failed read: nothing to overlap with, and the
                    # models (loaded on the first successful read) load on the main thread
                    if ahead is not None:
                        staged, t0 = ahead.result(), t_ahead
                    else:
                        t0 = time.monotonic()
                        staged = self._begin(item)
                except Exception as exc:
                    error = _failure(exc)
                ahead = None
                if staged is not None:
                    if self.overlap and pos + 1 < len(items):
                        t_ahead, ahead = time.monotonic(), Future()
                        _on_thread(ahead, self._begin, items[pos + 1], name="batch-read")
                    try:
                        self.segmenter.infer(staged)
                    except Exception as exc:
                        staged, error = None, _failure(exc)
                settle_behind()   # the previous case is recorded first
                if staged is None:
                    record(item[0], "failed", error, time.monotonic() - t0)
                    continue
                behind = Future()
                _on_thread(behind, write, staged, item, t0, name="batch-write")
                del staged
                if not self.overlap:
                    settle_behind()
            settle_behind()
        finally:   # only still set when stopped by a signal (or a failure of record itself)
            if ahead is not None:
                ahead.cancel()   # a read not yet started never starts; one under way is dropped
            if behind is not None and not behind.cancel():   # the case being written is completed, not cut
                try:
                    behind.exception()
                except BaseException:   # a second signal: give up waiting
                    pass
