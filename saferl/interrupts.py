"""Ctrl-C (or SIGTERM) that is never lost: a handler that also remembers the request.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread happens to be; a library
that catches ``BaseException`` around an import or a callback can swallow it, and the run goes
on as if nothing was pressed. :func:`install` keeps Python's behaviour and also sets a flag that
the training loop checks after every iteration (:func:`check`), so an interrupt swallowed
anywhere still stops the run at the next iteration boundary, with its checkpoint.

An exception raised while a native extension is being imported can abort the interpreter
(``terminate called after throwing an instance of 'nanobind::python_error'`` when Ctrl-C lands
inside jaxlib's import); :func:`deferred` holds the interrupt back until such a block ends.
Code that coordinates threads must not be cut short either: an interrupt landing inside
``threading.Condition.notify`` (between waking a waiter and removing it from the waiter list)
makes a later notify wake nobody, so TensorBoard's writer thread never saw its stop signal and
closing the run hung for ever. The training loop therefore does its bookkeeping (progress file,
TensorBoard, display, checkpoint) inside :func:`deferred`, and its clean-up inside
:func:`shielded`.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_requested = threading.Event()
_depth = 0  # how many deferred or shielded blocks the main thread is inside
_signal = signal.SIGINT  # the signal of the last request
_default_unraisable = sys.unraisablehook
#: The signals that ask a run to stop: Ctrl-C, and ``kill`` / a cluster scheduler's time limit.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _handler(signum: int, frame: FrameType | None) -> None:
    global _signal
    _signal = signal.Signals(signum)
    _requested.set()
    if _depth == 0:
        raise KeyboardInterrupt


@contextmanager
def shielded() -> Iterator[None]:
    """Within the block a Ctrl-C is only remembered (the next :func:`check` raises it); the
    block runs to its end. For work that must finish once begun, such as saving and closing a
    run that is already stopping. Blocks nest."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block a Ctrl-C is only remembered; it is raised as ``KeyboardInterrupt``
    when the outermost such block ends. For imports of native extensions and for code that
    coordinates threads, which must not be interrupted half-way."""
    with shielded():
        yield
    if _depth == 0:
        check()


def _unraisable(unraisable: Any) -> None:
    """Python reports an exception it had to ignore (raised in a gc callback or ``__del__``)
    with a traceback; a swallowed Ctrl-C is not an error but a request, honoured at the next
    :func:`check`, so it gets one line instead."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _requested.is_set():
        try:
            print("saferl: Ctrl-C received; stopping at the next safe point…", file=sys.stderr,
                  flush=True)
        except OSError:
            pass
        return
    _default_unraisable(unraisable)


def install() -> None:
    """Install the remembering handler for SIGINT and SIGTERM: both stop a run at once, with
    its checkpoint (main thread only; a no-op elsewhere; a signal that is ignored, as SIGINT is
    for a background job of a non-interactive shell, stays ignored)."""
    global _signal
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _handler)
    sys.unraisablehook = _unraisable
    _requested.clear()
    _signal = signal.SIGINT


def exit_status() -> int:
    """The exit status of a process stopped by a request: 128 + the signal's number (130
    after Ctrl-C, 143 after SIGTERM)."""
    return 128 + int(_signal)


def requested() -> bool:
    """Whether Ctrl-C was pressed since :func:`install`."""
    return _requested.is_set()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed (and possibly swallowed) earlier."""
    if _requested.is_set():
        raise KeyboardInterrupt
