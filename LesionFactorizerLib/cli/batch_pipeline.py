"""``batch`` in one process: the next case is read and prepared, and the previous one labelled and
written, while the networks run on the current one.

Three stages per case (:meth:`Segmenter.begin`, :meth:`~Segmenter.infer`, :meth:`~Segmenter.finish`):
the networks run on the calling (main) thread, so torch keeps the thread count the user or the
machine's load set for it and the networks are never touched by two threads at once; reading
and writing are SimpleITK, zlib and numpy, which release the GIL for the heavy parts, each on one
helper thread. The pipeline is bounded: while case *i* is in inference, only case *i+1* is read
ahead and only case *i−1* is still being written, so at most three cases are in memory.

Every case still ends in its own :class:`AtomicOutput` commit; cases are recorded (progress
events, summary rows) in list order, each only once its outputs are committed or it has failed.
On SIGINT/SIGTERM the case being written is finished (complete, committed) before the signal
ends the run; the case being read ahead is dropped once read (it wrote nothing).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Callable

from LesionFactorizerLib.errors import UserError

# (index, case id, inputs, output folder, redo: replace our earlier result); record(index, status, error, seconds)
Item = tuple[int, str, dict, str, bool]
Record = Callable[[int, str, str, float], None]


def _failure(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    return f"unexpected: {type(exc).__name__}: {exc}"


def _on_thread(fn, *args, name: str) -> Future:
    """``fn(*args)`` on a new thread. Not a daemon: however the main thread ends (a signal may come
    between the start and the hand-over of the future), the interpreter waits for a case being
    written to be committed, and never finalizes under a thread still inside SimpleITK."""
    future: Future = Future()

    def work():
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:   # handed to the main thread, which decides
            future.set_exception(exc)

    threading.Thread(target=work, name=name).start()
    return future


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
        ahead: Future | None = None     # case pos+1 being read and prepared
        behind: Future | None = None    # case pos−1 being labelled and written
        behind_item: Item | None = None
        behind_t0 = 0.0

        def settle_behind():
            nonlocal behind, behind_item
            if behind is None:
                return
            try:
                behind.result()
                status, error = "done", ""
            except Exception as exc:   # one broken case must not stop the cohort
                status, error = "failed", _failure(exc)
            record(behind_item[0], status, error, time.monotonic() - behind_t0)
            behind, behind_item = None, None

        starts: dict[int, float] = {}
        try:
            for pos, item in enumerate(items):
                starts[pos] = starts.get(pos, time.monotonic())
                staged, error = None, ""
                try:
                    # the first case, or one after a failed read: nothing to overlap with, and the
                    # models (loaded on the first successful read) load on the main thread
                    staged = ahead.result() if ahead is not None else self._begin(item)
                except Exception as exc:
                    error = _failure(exc)
                ahead = None
                if staged is not None:
                    if self.overlap and pos + 1 < len(items):
                        starts[pos + 1] = time.monotonic()
                        ahead = _on_thread(self._begin, items[pos + 1], name="batch-read")
                    try:
                        self.segmenter.infer(staged)
                    except Exception as exc:
                        staged, error = None, _failure(exc)
                settle_behind()   # recorded in list order: the previous case first
                if staged is None:
                    record(item[0], "failed", error, time.monotonic() - starts[pos])
                    continue
                behind, behind_item, behind_t0 = _on_thread(self.segmenter.finish, staged, name="batch-write"), \
                    item, starts[pos]
                del staged
                if not self.overlap:
                    settle_behind()
            settle_behind()
        finally:
            if behind is not None:   # stopped by a signal: the case being written is completed, not cut
                try:
                    behind.exception()
                except BaseException:   # a second signal: give up waiting
                    pass
