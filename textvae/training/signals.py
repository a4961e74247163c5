"""Stopping a run on request without losing work.

SIGINT (Ctrl-C) and SIGTERM (a scheduler's or a session's stop) do not end training mid-update:
they set a flag that the loop reads after each optimiser step, where it writes a checkpoint and
raises :class:`StopRequested`, so ``--resume`` continues from that very step (with a mid-epoch
checkpoint otherwise only ``train.checkpoint_every`` gives). A second SIGINT stops at once; the last
checkpoint is then the one to resume from. In the test report, which has no step to finish and keeps
its IW pass's finished batches, the first signal stops at once (:func:`stop_at_once`). The handlers are
installed by :func:`stop_on_signals` in the main thread only, and the previous ones come back when
training ends. A process that only waits on others (a study's parent) takes SIGTERM as Ctrl-C
instead (:func:`sigterm_interrupts`), so that it can pass the stop on to them; its runs also get
SIGTERM from the kernel when it dies without passing anything on (SIGKILL, a crash:
:func:`stop_with_parent`).
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator

log = logging.getLogger("textvae")
PARENT_ENV = "TEXTVAE_STOP_WITH_PARENT"  # set by a study for its subprocess runs: the study's pid
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StopRequested(KeyboardInterrupt):
    """Training stopped on a signal, after writing its checkpoint (a KeyboardInterrupt, so callers
    that handle Ctrl-C handle it too)."""


_requested = threading.Event()
_at_once: list[str] = []  # while not empty (stop_at_once), a signal raises StopRequested with its last reason
_received: list[int] = []  # the signals handled since the last take_last_signal(), for the exit status


def stop_requested() -> bool:
    """Whether a signal asked this process to stop training."""
    return _requested.is_set()


def take_last_signal() -> int | None:
    """The last signal a handler here took since the previous call (None: none), forgotten: a command stopped
    by it exits with 128 + its number, as the shell reports a process that a signal ended."""
    last = _received[-1] if _received else None
    _received.clear()
    return last


def _handle(signum: int, frame: object) -> None:
    _received.append(signum)
    if signum == signal.SIGINT and _requested.is_set():
        raise KeyboardInterrupt
    _requested.set()
    if _at_once:
        log.warning("%s: stopping now", signal.Signals(signum).name)
        raise StopRequested(_at_once[-1])
    log.warning("%s: training stops after the current step, with a checkpoint%s", signal.Signals(signum).name,
                " (Ctrl-C again: stop at once)" if signum == signal.SIGINT else "")


@contextlib.contextmanager
def _handling(handlers: dict[int, Callable[[int, Any], None]]) -> Iterator[None]:
    """``handlers`` installed for the block, the previous ones back after it; nothing outside the
    main thread, where Python cannot install them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s, handler in handlers.items()}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM ask training to stop (:func:`stop_requested`) for the block."""
    _requested.clear()
    try:
        with _handling({signal.SIGINT: _handle, signal.SIGTERM: _handle}):
            yield
    finally:
        _requested.clear()


@contextlib.contextmanager
def stop_at_once(reason: str) -> Iterator[None]:
    """Within :func:`stop_on_signals`, for work that keeps its own progress and has no step to finish
    (the test report: its IW pass keeps each finished batch), SIGINT and SIGTERM stop at once:
    :class:`StopRequested` with ``reason`` is raised wherever the main thread is. A stop asked for
    before the block raises on entry. Without this the report would run on to its end, long at K = 500, and a
    study stopping its runs would wait for it in vain."""
    if _requested.is_set():
        raise StopRequested(reason)
    _at_once.append(reason)
    try:
        yield
    finally:
        _at_once.pop()


def stop_with_parent() -> None:
    """In a study's subprocess run (``TEXTVAE_STOP_WITH_PARENT`` holds the study's pid): ask the
    kernel for SIGTERM when the study dies, however it dies (Linux's ``PR_SET_PDEATHSIG``; elsewhere
    nothing), so that a killed study leaves no orphan writing its run folders. A study already gone
    by then (between fork and here) gets the same answer at once."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning("cannot ask to stop with the study (prctl: %s)", os.strerror(ctypes.get_errno()))
    elif os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)


def _interrupt(signum: int, frame: object) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def sigterm_interrupts() -> contextlib.AbstractContextManager[None]:
    """SIGTERM raises KeyboardInterrupt in the block, as Ctrl-C does (default: the process dies at once)."""
    return _handling({signal.SIGTERM: _interrupt})
