"""Stop signals: Ctrl-C (SIGINT) and SIGTERM end a run, or a whole sweep, at once and on record.

While a run trains, `stop_signals` turns either signal into a KeyboardInterrupt, so the run ends
KILLED. A sweep's launching process is guarded from its first job to its end (`guard_sweep`, set
up by the sweep callback): a signal there, or a job stopped by one, stops every worker process the
launcher started (psutil), and the launcher exits 130 (SIGINT) or 143 (SIGTERM) with one line
saying how to continue; the callback's exit hook then marks what is still RUNNING KILLED. A worker
whose job was stopped ends at once and leaves the report to the launcher. How a sweep's process
ends is the failure policy's (`policy.stop_sweep`); this module only catches the signals.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report
WORKER_GRACE_SECONDS = 30  # for a stopped worker to close its run; then it is killed

received: list[int] = []  # every stop signal this process got, in order
_sweep_hint: str | None = None  # set in a sweep's launching process only
_on_stop: Callable[[], None] | None = None  # what a stop signal does in a sweep's processes


def exit_status() -> int:
    return EXIT_STATUS[received[-1] if received else signal.SIGINT]


def _install(handler) -> dict:
    """`handler` for both signals, except one the parent set to be ignored (SIGINT in a shell's
    background job), which stays ignored as in any Unix program; returns the previous ones."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in EXIT_STATUS
            if signal.getsignal(s) is not signal.SIG_IGN}


@contextmanager
def stop_signals():
    """Ctrl-C and SIGTERM raise KeyboardInterrupt while the block runs, as Python's own SIGINT
    handler does, and are recorded: Python swallows an exception raised while a `__del__` or a
    weakref callback runs, so an interrupt that lands there would be lost; the recorded one stops
    the run at the next epoch end instead (see `job.stop_check`), and Python's "Exception
    ignored" traceback for it is not printed. Yields this block's record."""
    got: list[int] = []

    def interrupt(signum, frame):
        received.append(signum)
        got.append(signum)
        if len(got) == 1:  # a second signal must not break the first one's cleanup
            raise KeyboardInterrupt(f"signal {signum}")

    def quiet(unraisable) -> None:  # the lost interrupt is recorded: nothing to print
        if not (got and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            hook(unraisable)

    previous, hook = _install(interrupt), sys.unraisablehook
    sys.unraisablehook = quiet
    try:
        yield got
    finally:
        sys.unraisablehook = hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def guard_sweep(hint: str, on_stop: Callable[[], None]) -> None:
    """In a sweep's launching process: a stop signal from now on stops the whole sweep, by
    `on_stop` (the failure policy's `stop_sweep`)."""
    global _sweep_hint, _on_stop
    _sweep_hint, _on_stop = hint, on_stop
    _install(_stop_on_first)


def _stop_on_first(signum, frame) -> None:
    """Stop the sweep on the first stop signal; a later one (the launcher's SIGTERM after a
    terminal's SIGINT reached everyone) must not cut short the cleanup the first one began."""
    received.append(signum)
    if len(received) == 1 and _on_stop is not None:
        _on_stop()


def guard_worker(on_stop: Callable[[], None]) -> None:
    """In a sweep's worker process (joblib, submitit): a stop signal that comes between jobs
    ends it quietly, like one during a job, instead of with a traceback."""
    global _on_stop
    if _sweep_hint is None:
        _on_stop = on_stop
        _install(_stop_on_first)


def sweep_hint() -> str | None:
    """How to continue the sweep; None outside a sweep's launching process (in a worker)."""
    return _sweep_hint


def stop_workers() -> int:
    """SIGTERM to every process this one started (a stopped job closes its run KILLED), then
    SIGKILL to any still alive after the grace period: none outlives the launcher. Returns how
    many there were."""
    import psutil

    # loky's resource tracker ignores SIGTERM by design and ends by itself once the launcher
    # is gone, after freeing the workers' shared memory; killing it only leaks that memory
    def is_resource_tracker(process) -> bool:
        try:
            return any("resource_tracker" in part for part in process.cmdline())
        except psutil.Error:  # gone already
            return False

    workers = [p for p in psutil.Process().children(recursive=True) if not is_resource_tracker(p)]
    for worker in workers:
        try:
            worker.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(workers, timeout=WORKER_GRACE_SECONDS)
    for worker in alive:
        try:
            worker.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(workers)
