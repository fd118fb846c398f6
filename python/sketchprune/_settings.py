"""Per-thread stacks of settings for ``with`` blocks (``use_backend``, ``limit_memory``).

The ops read the innermost setting when they run (the classes are also decorators).  Dynamo
cannot trace such thread-local state (it would trace the push away, and the op would then run
without it), so pushing while Dynamo traces raises: Dynamo turns that into a graph break and runs
the block eagerly, where the setting holds (``fullgraph=True`` refuses to compile).  Not ``torch.compiler.disable``: it imports Dynamo
(~1 s) when the decorated class is defined, i.e. at ``import sketchprune``.
"""

from __future__ import annotations

import threading

import torch

EMPTY = object()   # top()'s answer outside every block


# True only while Dynamo traces (torch.compile, strict torch.export): not in the eager frames of a
# compiled function, nor under non-strict export, where the push holds (torch < 2.7: is_compiling)
# (torch's own function, not a wrapper: Dynamo folds a direct call to a constant while tracing)
dynamo_tracing = getattr(torch.compiler, "is_dynamo_compiling", None) or torch.compiler.is_compiling


class ThreadStack:
    def __init__(self, what: str):
        self.what = what
        self._local = threading.local()

    def _stack(self) -> list:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def push(self, value) -> None:
        if dynamo_tracing():
            raise RuntimeError(f"sketchprune.{self.what} inside torch.compile'd code: put the block around the "
                               "compiled call")
        self._stack().append(value)

    def pop(self) -> None:
        self._stack().pop()

    def top(self, default=EMPTY):
        """The innermost value, or ``default`` outside every block (``EMPTY`` unless given)."""
        stack = self._stack()
        return stack[-1] if stack else default

