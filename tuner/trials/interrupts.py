"""Ctrl-C that always lands. Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives;
if that is inside a weakref or `__del__` callback, Python prints "Exception ignored" and carries on, and a
tuning study would run to the end. So the handler also marks the interrupt pending, and a watchdog thread
delivers it again every second until the code that handles it says so (`handled()`)."""

from __future__ import annotations

import _thread
import signal
import sys
import threading
import time

REDELIVER_SECONDS = 1.0
_pending = threading.Event()
_installed = False


def _on_sigint(signum, frame) -> None:
    _pending.set()
    raise KeyboardInterrupt


def _watchdog() -> None:
    while True:
        _pending.wait()
        time.sleep(REDELIVER_SECONDS)
        if _pending.is_set():  # nothing handled it: it was lost in a callback
            _thread.interrupt_main()  # runs _on_sigint in the main thread again


def _quiet_lost_interrupt(unraisable) -> None:
    """A KeyboardInterrupt lost in a callback is redelivered: no 'Exception ignored' traceback for it."""
    if unraisable.exc_type is not KeyboardInterrupt:
        _default_unraisable(unraisable)


_default_unraisable = sys.unraisablehook


def install() -> None:
    """Route SIGINT through the pending flag (main thread only; once per process)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _quiet_lost_interrupt
    threading.Thread(target=_watchdog, name="deepfm-interrupt", daemon=True).start()
    _installed = True


def handled() -> None:
    """The interrupt reached code that acts on it (marks the trial failed, stops workers): stop redelivering."""
    _pending.clear()
