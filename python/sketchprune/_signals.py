"""Hold back Python signal handlers while a group of in-place updates must happen together.

A KeyboardInterrupt (or any exception a signal handler raises: a preemption handler, an alarm) is
raised by the interpreter between two bytecodes, so it can land between two updates that only
make sense together -- the second moment updated but not the cross moment, rows counted but not
accumulated -- and a checkpoint written afterwards would carry the inconsistency.
:func:`deferred_signals` swaps the Python-level handlers of the usual asynchronous signals for a
recorder for the duration of the block and, once the block is done, restores them and calls them
in arrival order, so whatever they raise is raised *after* the block.  The block's own run time
bounds the delay (a native kernel cannot be interrupted by a Python handler in any case).  Swapping
handlers costs a few system calls, so a block nested in another is free (the outer one covers it).

Signal handlers can only be changed from the main thread of the main interpreter; elsewhere the
block runs unprotected (Python runs signal handlers only in the main thread, so a block running in
another thread is not interrupted by them).
"""

from __future__ import annotations

import contextlib
import signal
import threading

#: asynchronous signals whose Python handlers are held back (synchronous faults are never touched)
_HELD = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGVTALRM",
                                           "SIGPROF", "SIGUSR1", "SIGUSR2", "SIGBREAK") if hasattr(signal, n))


_active = 0   # nesting depth in the main thread: an inner block inside an outer one costs nothing


@contextlib.contextmanager
def deferred_signals():
    """Run the block with Python signal handlers deferred to its end (see the module doc)."""
    global _active
    if _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    held, caught = {}, []

    def record(signum, frame):
        caught.append((signum, frame))

    try:
        for s in _HELD:
            h = signal.getsignal(s)
            if callable(h):
                signal.signal(s, record)
                held[s] = h
    except ValueError:                  # not the main interpreter: nothing was swapped after this
        pass
    _active += 1
    try:
        yield
    finally:
        _active -= 1
        for s, h in held.items():
            signal.signal(s, h)
        for signum, frame in caught:
            held[signum](signum, frame)  # may raise (KeyboardInterrupt): now the block is complete
