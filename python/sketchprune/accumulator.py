"""CovarianceAccumulator: streaming second moments (and cross moments) of activations."""

from __future__ import annotations

import contextlib
import threading
import warnings

import torch

from .budget import Budget, BudgetError, format_bytes
from ._settings import dynamo_tracing
from ._signals import deferred_signals
from .ops import cov_accumulate_, cross_accumulate_

_IN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _warn_cancellation(var: torch.Tensor, second: torch.Tensor) -> None:
    """A float32 second moment keeps ~7 digits; centring subtracts mean^2, so features whose mean is
    large against their spread lose most of them (the variance can even come out negative)."""
    lost = var < 1e-4 * second
    if bool(lost.any()):
        worst = int(torch.argmin(var / second.clamp_min(torch.finfo(torch.float64).tiny)))
        warnings.warn(f"CovarianceAccumulator.covariance(centered=True): in {int(lost.sum())} of {var.numel()} "
                      f"features the mean is large against the spread (feature {worst}: variance {float(var[worst]):.3g} "
                      f"vs mean square {float(second[worst]):.3g}), so the float32 accumulator cannot resolve the "
                      "covariance there; use dtype=torch.float64 (or subtract a rough mean before update)",
                      stacklevel=3)


class CovarianceAccumulator:
    """Accumulate Sigma = X^T X (and C = X^T Y) over a stream of row chunks.

    Parameters
    ----------
    dim: feature dimension d of x.
    device: where the statistics live (and where the kernels run).
    dtype: accumulator dtype, float32 (default) or float64.
    cross_dim: if given, also accumulate C = X^T Y for targets y with this many columns.
    budget: a :class:`~sketchprune.Budget` (or "2GiB", bytes, None = free memory) capping the
        accumulator's memory: the statistics themselves plus the staging buffer.
    stage_rows: small chunks are copied into a staging buffer and flushed in launches of at
        least this many rows (when the budget allows), because for short chunks reading and
        writing Sigma costs as much as the arithmetic.

    ``update(x, y=None, mask=None)`` takes x of shape (..., d) (any leading dims are flattened
    into rows), y of shape (..., cross_dim) and a boolean mask of the leading shape, or flattened
    to one dim (rows where it is False are skipped).  Inputs are detached: an update never keeps
    an autograd graph alive.  Results: ``covariance(centered=False)`` (X^T X / count, or the
    covariance about the mean), ``cross()`` (X^T Y / count), ``diag()``, ``mean()``, ``count``.

    Several streams: ``merge_(other)`` adds another accumulator; ``all_reduce_(group)`` sums the
    statistics over the ranks of a ``torch.distributed`` process group.  Checkpoints:
    ``state_dict()`` / ``load_state_dict()`` (plain tensors, loadable with ``weights_only=True``);
    pickling and ``copy.deepcopy`` work too (without the staging buffer).  One accumulator may be
    updated from several threads (its methods hold a lock); the statistics are also maintained
    outside ``torch.inference_mode`` tensors, so an accumulator fed in inference mode keeps working
    outside it.

    Each update, flush, merge or load is all or nothing: a KeyboardInterrupt (or whatever a signal
    handler raises) arriving meanwhile is raised once it is complete.  If one fails part-way for
    another reason (out of memory between the second-moment and the cross-moment kernel, say), the
    accumulator refuses further use with an error saying so, instead of returning statistics that
    disagree with each other; :meth:`load_state_dict` (from a checkpoint) makes it usable again.
    """

    def __init__(self, dim: int, device="cpu", dtype=torch.float32, cross_dim: int | None = None,
                 budget: Budget | int | str | None = None, stage_rows: int = 8192):
        if dim < 1:
            raise ValueError(f"CovarianceAccumulator: dim must be >= 1, got {dim}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"CovarianceAccumulator: dtype must be float32 or float64, got {dtype}")
        if cross_dim is not None and cross_dim < 1:
            raise ValueError(f"CovarianceAccumulator: cross_dim must be >= 1, got {cross_dim}")
        self.dim, self.cross_dim = dim, cross_dim
        self.device, self.dtype = torch.device(device), dtype
        self.budget = Budget.of(budget)
        esize = torch.finfo(dtype).bits // 8
        stat_bytes = esize * dim * (dim + (cross_dim or 0)) + 8 * dim
        self.budget.check(self.device, stat_bytes, what=f"CovarianceAccumulator(dim={dim}, cross_dim={cross_dim})")
        self._stat_bytes = stat_bytes
        self._stage_target = int(stage_rows)
        with torch.inference_mode(False):   # normal tensors, even when built in inference mode
            self.sigma = torch.zeros(dim, dim, dtype=dtype, device=self.device)
            self.device = self.sigma.device  # concrete ("cuda" -> the device it landed on, "cpu:0" -> cpu)
            self._cross = None if cross_dim is None else torch.zeros(dim, cross_dim, dtype=dtype, device=self.device)
            self._sum = torch.zeros(dim, dtype=torch.float64, device=self.device)
            self._count = torch.zeros((), dtype=torch.int64, device=self.device)
        self._lock = threading.RLock()
        self._damaged = None
        self._reset_stage()

    def _reset_stage(self) -> None:
        self._stage_x = self._stage_y = self._stage_m = None
        self._staged = 0
        self._stage_rows = 0

    # ------------------------------------------------------------------ streaming
    def update(self, x: torch.Tensor, y: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> None:
        x, y, mask = self._rows(x, y, mask)
        with self._guard():
            self._update(x, y, mask)

    def _update(self, x, y, mask) -> None:
        t = x.shape[0]
        if t == 0:
            return
        if mask is None:
            dsum, dcount = torch.sum(x, dim=0, dtype=torch.float64), t
        else:
            # where, not a product: NaN/Inf in skipped (padding) rows must not reach the sum
            dsum, dcount = torch.sum(torch.where(mask[:, None], x, 0), dim=0, dtype=torch.float64), mask.sum()
        # while torch.compile traces: straight into the statistics, leaving the staging state (Python
        # ints Dynamo would guard on, recompiling at every update) and the budget (reads the free
        # memory) alone; rows staged by eager updates stay staged, the sums do not depend on order
        if dynamo_tracing():
            self._sum += dsum
            self._count += dcount
            self._accumulate(x, y, mask)
            return
        staged = t < self._stage_target and self._ensure_stage(x, y)
        with self._mutating():
            if not staged:
                self._flush()
                self._accumulate(x, y, mask)
            else:
                if self._staged + t > self._stage_rows:
                    self._flush()
                s = slice(self._staged, self._staged + t)
                self._stage_x[s].copy_(x)
                if y is not None:
                    self._stage_y[s].copy_(y)
                if mask is None:
                    self._stage_m[s].fill_(True)
                else:
                    self._stage_m[s].copy_(mask)
                self._staged += t
            self._sum += dsum
            self._count += dcount

    @contextlib.contextmanager
    def _mutating(self):
        """A group of in-place changes that only make sense together: signals deferred to its end
        (:func:`~sketchprune._signals.deferred_signals`); an exception part-way marks the accumulator
        damaged (see the class doc).  Nothing while torch.compile traces (the graph runs as one op)."""
        if dynamo_tracing():
            yield
            return
        with deferred_signals():
            try:
                yield
            except BaseException as e:
                if self._damaged is None:
                    self._damaged = f"{type(e).__name__}: {e}"
                raise

    def flush(self) -> None:
        """Push staged rows into the statistics (called automatically before reading them)."""
        with self._guard():
            self._flush()

    def _flush(self) -> None:
        if self._staged:
            n = self._staged
            ys = None if self._stage_y is None else self._stage_y[:n]
            with self._mutating():
                self._accumulate(self._stage_x[:n], ys, self._stage_m[:n])
                self._staged = 0

    def drain_into(self, sigma: torch.Tensor, cross: torch.Tensor | None = None) -> None:
        """Add the raw sums accumulated so far (X^T X, and X^T Y when ``cross_dim`` is set) into
        ``sigma`` / ``cross`` (e.g. float64 totals) and reset them to zero.  Count, sums and means
        are kept, so ``covariance()`` / ``cross()`` afterwards only cover the rows added since the
        drain.  Meant for mixed precision: float32 kernel partials moved into float64 totals every
        few thousand rows, so the rounding error does not grow with the stream."""
        if sigma.shape != self.sigma.shape:
            raise ValueError(f"drain_into: sigma must have shape {tuple(self.sigma.shape)}, got {tuple(sigma.shape)}")
        if self._cross is not None and (cross is None or cross.shape != self._cross.shape):
            raise ValueError(f"drain_into: cross must be a tensor of shape {tuple(self._cross.shape)}")
        with self._guard():
            self._flush()
            with self._mutating():
                sigma += self.sigma
                self.sigma.zero_()
                if self._cross is not None:
                    cross += self._cross
                    self._cross.zero_()

    def _accumulate(self, x, y, mask):
        cov_accumulate_(self.sigma, x, 1.0, mask)
        if self._cross is not None:
            cross_accumulate_(self._cross, x, y, 1.0, mask)

    def _ensure_stage(self, x, y) -> bool:
        """Allocate the staging buffer once (as large as the budget allows); False if none fits."""
        if self._stage_x is not None:
            if self._stage_x.dtype != x.dtype:
                self._flush()
                self._stage_x = self._stage_y = self._stage_m = None
            else:
                return True
        row = x.element_size() * (self.dim + (self.cross_dim or 0)) + 1
        try:
            rows = self.budget.plan_rows(self.device, row, self._stage_target, fixed_bytes=self._stat_bytes,
                                         min_rows=min(1024, self._stage_target), what="CovarianceAccumulator staging")
        except BudgetError:
            return False  # no room to stage: update directly (same result, more launches)
        self._stage_rows = rows
        with torch.inference_mode(False):   # a buffer first filled in inference mode is reused outside it
            self._stage_x = torch.empty(rows, self.dim, dtype=x.dtype, device=self.device)
            if self.cross_dim is not None:
                self._stage_y = torch.empty(rows, self.cross_dim, dtype=y.dtype, device=self.device)
            self._stage_m = torch.empty(rows, dtype=torch.bool, device=self.device)
        return True

    def _rows(self, x, y, mask):
        name = "CovarianceAccumulator.update"
        if not isinstance(x, torch.Tensor) or x.dtype not in _IN_DTYPES:
            raise TypeError(f"{name}: x must be a float32/float16/bfloat16 tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"{name}: x must have shape (..., {self.dim}), got {tuple(x.shape)}")
        if x.device != self.device:
            raise ValueError(f"{name}: x is on {x.device} but the accumulator lives on {self.device}")
        lead = x.shape[:-1]
        x = x.detach().reshape(-1, self.dim)
        if (y is None) != (self.cross_dim is None):
            raise ValueError(f"{name}: y must be given exactly when cross_dim was set (cross_dim={self.cross_dim})")
        if y is not None:
            if y.shape[:-1] != lead or y.shape[-1] != self.cross_dim:
                raise ValueError(f"{name}: y must have shape {tuple(lead) + (self.cross_dim,)}, got {tuple(y.shape)}")
            if y.dtype != x.dtype:
                raise TypeError(f"{name}: y must have the dtype of x ({x.dtype}), got {y.dtype}")
            y = y.detach().reshape(-1, self.cross_dim)
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise TypeError(f"{name}: mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
            if mask.shape != lead and tuple(mask.shape) != (x.shape[0],):
                raise ValueError(f"{name}: mask must have shape {tuple(lead)} (or ({x.shape[0]},), flattened), got "
                                 f"{tuple(mask.shape)}")
            mask = mask.reshape(-1).to(self.device)
        return x, y, mask

    # ------------------------------------------------------------------ results
    @property
    def count(self) -> int:
        """Rows accumulated so far (masked rows excluded)."""
        return int(self._count)

    def _n(self) -> int:
        n = self.count
        if n == 0:
            raise RuntimeError("CovarianceAccumulator: no rows have been accumulated yet")
        return n

    def mean(self) -> torch.Tensor:
        with self._guard():
            return (self._sum / self._n()).to(self.dtype)

    def covariance(self, centered: bool = False) -> torch.Tensor:
        """X^T X / count (the second moment), or with centered=True the covariance about the mean."""
        with self._guard():           # read under the lock; the arithmetic below works on copies
            self._flush()
            n = self._n()
            s, mu = self.sigma / n, self._sum / n
        if centered:
            s64 = s.to(torch.float64)
            c = s64 - torch.outer(mu, mu)
            if self.dtype == torch.float32:
                _warn_cancellation(torch.diagonal(c), torch.diagonal(s64))
            s = c.to(self.dtype)
        return s

    def cross(self) -> torch.Tensor:
        """X^T Y / count."""
        if self._cross is None:
            raise RuntimeError("CovarianceAccumulator: no cross term (construct with cross_dim=...)")
        with self._guard():
            self._flush()
            return self._cross / self._n()

    def diag(self) -> torch.Tensor:
        """diag(X^T X) / count: the per-feature mean square."""
        with self._guard():
            self._flush()
            return torch.diagonal(self.sigma).clone() / self._n()

    def merge_(self, other: "CovarianceAccumulator") -> "CovarianceAccumulator":
        """Add another accumulator's statistics (e.g. from another data shard) into this one."""
        if not isinstance(other, CovarianceAccumulator):
            raise TypeError(f"CovarianceAccumulator.merge_: expected a CovarianceAccumulator, got {type(other).__name__}")
        if (other.dim, other.cross_dim) != (self.dim, self.cross_dim):
            raise ValueError(f"CovarianceAccumulator.merge_: dimensions differ (dim, cross_dim) = "
                             f"{(self.dim, self.cross_dim)} vs {(other.dim, other.cross_dim)}")
        if other is self:
            raise ValueError("CovarianceAccumulator.merge_: cannot merge an accumulator into itself")
        theirs = other._snapshot()      # one lock at a time: merges in opposite orders cannot deadlock
        with self._guard():
            self._flush()
            theirs = [None if t is None else t.to(mine) for mine, t in zip(self._stats(), theirs)]
            with self._mutating():
                for mine, t in zip(self._stats(), theirs):
                    if mine is not None:
                        mine += t
        return self

    def all_reduce_(self, group=None) -> "CovarianceAccumulator":
        """Sum the statistics over the ranks of a ``torch.distributed`` process group (every rank
        calls it; each ends with the totals of all ranks' rows).  Staged rows are flushed first.
        The accumulator's device must suit the group's backend (CPU for gloo, CUDA for NCCL)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("CovarianceAccumulator.all_reduce_: torch.distributed is not initialised "
                               "(call torch.distributed.init_process_group first)")
        with self._guard():
            self._flush()
            for t in self._stats():
                if t is not None:
                    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return self

    def _stats(self) -> tuple:
        """(sigma, cross, sum, count); cross is None without ``cross_dim``."""
        return self.sigma, self._cross, self._sum, self._count

    def _snapshot(self) -> list:
        """Copies of (sigma, cross, sum, count), staged rows flushed, taken under the lock."""
        with self._guard():
            self._flush()
            return [None if t is None else t.clone() for t in self._stats()]

    def _guard(self, repair: bool = False):
        """The lock (concurrent updates from threads), or nothing while torch.compile traces (a
        lock is a context manager Dynamo cannot trace; a compiled graph runs in one thread).
        Refuses a damaged accumulator (see the class doc) unless ``repair``."""
        if self._damaged is not None and not repair:
            raise RuntimeError(f"CovarianceAccumulator: an earlier operation failed part-way ({self._damaged}), so "
                               "its statistics may disagree with each other; restore them with load_state_dict() "
                               "from a checkpoint, or start a new accumulator")
        if dynamo_tracing():
            return contextlib.nullcontext()
        return self._lock

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The statistics as plain tensors (staged rows flushed first; copies, on the accumulator's
        device): save with ``torch.save`` and restore with :meth:`load_state_dict` (also with
        ``torch.load(..., weights_only=True)``)."""
        sigma, cross, total, count = self._snapshot()
        return {"dim": self.dim, "cross_dim": self.cross_dim, "dtype": str(self.dtype).removeprefix("torch."),
                "sigma": sigma, "cross": cross, "sum": total, "count": count}

    def load_state_dict(self, state: dict) -> "CovarianceAccumulator":
        """Replace the statistics with those of :meth:`state_dict` (from any device; the dims must
        match; a float64 state may be loaded into a float32 accumulator and vice versa)."""
        need = {"dim", "cross_dim", "sigma", "cross", "sum", "count"}
        if not isinstance(state, dict) or not need <= set(state):
            raise ValueError(f"CovarianceAccumulator.load_state_dict: expected a dict with keys {sorted(need)}")
        if (state["dim"], state["cross_dim"]) != (self.dim, self.cross_dim):
            raise ValueError(f"CovarianceAccumulator.load_state_dict: the state has (dim, cross_dim) = "
                             f"{(state['dim'], state['cross_dim'])}, this accumulator {(self.dim, self.cross_dim)}")
        new = [state["sigma"], state["cross"], state["sum"], state["count"]]
        for have, t, name in zip(self._stats(), new, ("sigma", "cross", "sum", "count")):
            if have is not None and (not isinstance(t, torch.Tensor) or t.shape != have.shape):
                raise ValueError(f"CovarianceAccumulator.load_state_dict: {name} must be a tensor of shape "
                                 f"{tuple(have.shape)}, got {getattr(t, 'shape', type(t).__name__)}")
            if have is not None and name == "count":
                if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or int(t) < 0:
                    raise ValueError(f"CovarianceAccumulator.load_state_dict: count must be a non-negative integer "
                                     f"tensor, got {t.dtype} {t.tolist()}")
            elif have is not None and not t.is_floating_point():
                raise TypeError(f"CovarianceAccumulator.load_state_dict: {name} must be a floating-point tensor, "
                                f"got {t.dtype}")
        new = [None if have is None else t.to(have) for have, t in zip(self._stats(), new)]
        with self._guard(repair=True):
            with deferred_signals():      # all or nothing, and a successful load repairs a damaged accumulator
                for have, t in zip(self._stats(), new):
                    if have is not None:
                        have.copy_(t)
                self._reset_stage()
                self._damaged = None
        return self

    def __getstate__(self) -> dict:
        with self._guard():          # a consistent snapshot while other threads may update
            state = {k: v for k, v in self.__dict__.items() if k != "_lock"}
            sigma, cross, total, count = self._snapshot()
        state.update(sigma=sigma, _cross=cross, _sum=total, _count=count,
                     _stage_x=None, _stage_y=None, _stage_m=None, _staged=0, _stage_rows=0)
        return state

    def __setstate__(self, state: dict) -> None:
        with torch.inference_mode(False):   # restored in inference mode: still normal tensors
            for k in ("sigma", "_cross", "_sum", "_count"):
                t = state.get(k)
                if isinstance(t, torch.Tensor) and t.is_inference():
                    state[k] = t.clone()
        state.setdefault("_damaged", None)  # pickled by a version that did not record it
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __deepcopy__(self, memo):
        import copy

        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    def __repr__(self) -> str:
        return (f"CovarianceAccumulator(dim={self.dim}, cross_dim={self.cross_dim}, device={self.device}, "
                f"dtype={self.dtype}, count={self.count}, stats={format_bytes(self._stat_bytes)})")
