"""Explicit memory budgets: plan chunk sizes, or fail before allocating anything.

``Budget("8GiB")`` caps the *extra* memory an operation may allocate on its device
(workspaces, staging buffers, temporaries) -- not the inputs and outputs the caller owns.
``Budget(None)`` means "whatever is free now" (CUDA: ``torch.cuda.mem_get_info``; CPU: the
kernel's MemAvailable).  When even the smallest chunk does not fit, :class:`BudgetError` is
raised *before* any allocation, saying what was needed and what was given.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

from ._settings import ThreadStack

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


class BudgetError(MemoryError):
    """The work cannot be done within the memory budget."""


def parse_bytes(value: int | float | str) -> int:
    """'8GiB', '512 MB', '1.5e9', 4096 -> bytes."""
    if isinstance(value, bool):
        raise TypeError("a memory size cannot be a bool")
    if isinstance(value, (int, float)):
        n = float(value)
    elif isinstance(value, str):
        mt = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if not mt or mt.group(2).lower() not in _UNITS:
            raise ValueError(
                f"cannot parse memory size {value!r}: use a number of bytes or e.g. '512MiB', '8GiB', '2GB'"
            )
        n = float(mt.group(1)) * _UNITS[mt.group(2).lower()]
    else:
        raise TypeError(f"memory size must be int, float or str, not {type(value).__name__}")
    if n < 0:
        raise ValueError(f"memory size must be >= 0, got {value!r}")
    return int(n)


def format_bytes(n: int | float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


def free_bytes(device: torch.device | str) -> int:
    """Memory free on ``device`` right now."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # plus what torch's caching allocator holds but does not use: it can hand that out again
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62  # unknown platform: no limit we can see


@dataclass(frozen=True)
class Budget:
    """A cap on the extra memory an operation may allocate on its device.

    ``Budget("8GiB")``, ``Budget(2**30)``, or ``Budget()`` / ``Budget(None)`` for whatever is
    free at the time of planning.
    """

    limit: int | None = None

    def __init__(self, limit: int | float | str | None = None):
        object.__setattr__(self, "limit", None if limit is None else parse_bytes(limit))

    @classmethod
    def of(cls, budget: "Budget | int | float | str | None") -> "Budget":
        return budget if isinstance(budget, Budget) else cls(budget)

    def bytes_for(self, device: torch.device | str) -> int:
        """Bytes available under this budget on ``device``."""
        free = free_bytes(device)
        return free if self.limit is None else min(self.limit, free)

    def plan_rows(
        self,
        device: torch.device | str,
        bytes_per_row: int,
        total_rows: int,
        fixed_bytes: int = 0,
        min_rows: int = 1,
        what: str = "this operation",
    ) -> int:
        """Largest chunk (<= total_rows) with fixed_bytes + rows * bytes_per_row within budget.

        Raises BudgetError when not even ``min(min_rows, total_rows)`` rows fit.
        """
        avail = self.bytes_for(device)
        need_min = fixed_bytes + max(min(min_rows, total_rows), 1) * bytes_per_row
        if total_rows == 0 or bytes_per_row == 0:
            if fixed_bytes > avail:
                raise BudgetError(self._msg(what, fixed_bytes, avail, device))
            return total_rows
        if need_min > avail:
            raise BudgetError(self._msg(what, need_min, avail, device))
        return int(min(total_rows, (avail - fixed_bytes) // bytes_per_row))

    def check(self, device: torch.device | str, need: int, what: str = "this operation") -> None:
        avail = self.bytes_for(device)
        if need > avail:
            raise BudgetError(self._msg(what, need, avail, device))

    def _msg(self, what: str, need: int, avail: int, device) -> str:
        given = "free memory" if self.limit is None else f"the budget of {format_bytes(self.limit)}"
        return (
            f"{what} needs at least {format_bytes(need)} of extra memory on {torch.device(device)}, "
            f"but {given} allows {format_bytes(avail)}; raise the budget or use smaller inputs"
        )

    def __repr__(self) -> str:
        return "Budget(free memory)" if self.limit is None else f"Budget({format_bytes(self.limit)})"


# ---------------------------------------------------------------- active budget (context)
_budgets = ThreadStack("limit_memory")


def active_budget() -> Budget:
    """The innermost budget set with ``with sketchprune.limit_memory(...)``; else free memory."""
    return _budgets.top(Budget(None))


class limit_memory(contextlib.ContextDecorator):
    """``with limit_memory("2GiB"):`` -- ops inside plan their workspaces within this budget.  Like
    :func:`~sketchprune.use_backend`, a thread-local setting read when an op runs: inside a
    ``torch.compile``d function the block is a graph break (runs eagerly; ``fullgraph=True`` fails),
    so wrap the compiled call instead."""

    def __init__(self, budget: "Budget | int | float | str | None"):
        self.budget = Budget.of(budget)

    def __enter__(self) -> Budget:
        _budgets.push(self.budget)
        return self.budget

    def __exit__(self, *exc) -> None:
        _budgets.pop()
