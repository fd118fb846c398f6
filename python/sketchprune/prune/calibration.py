"""Calibration statistics: streamed second moments of the inputs of each block's Linears.

:func:`collect_statistics` runs calibration batches through a model with forward pre-hooks on
each decoder layer and streams the inputs of

* ``down_in``: ``mlp.down_proj`` -- the FFN intermediate activation ``h = act(gate x) * up x``;
* ``o_in``: ``self_attn.o_proj`` -- the concatenated head outputs ``z = [z_1; ...; z_H]``;
* ``mlp_in``: ``mlp.up_proj`` (= ``gate_proj``) -- the block's normed hidden state before the FFN;
* ``attn_in``: ``self_attn.q_proj`` (= ``k_proj`` = ``v_proj``) -- the normed hidden state
  before attention,

into per-layer statistics.  Each is collected as

* ``"diag"`` (:class:`DiagMoments`): per-feature sums and sums of squares (float64), giving the
  mean ``E[x]``, the mean square ``E[x^2]`` and the variance -- all that the FFN criteria need, and
  cheap for ``down_in`` whose full covariance (``d_ff^2``) would be large;
* ``"full"`` (:class:`FullMoments`): the full second moment ``E[x x^T]`` through a
  :class:`~sketchprune.CovarianceAccumulator` (the ``cov_accumulate_`` kernel; float64 inputs, which
  the kernels do not take, are accumulated with a float64 matmul instead), plus the mean; with
  ``cross_dim`` also the cross moment ``E[x y^T]`` with a token-aligned target ``y``
  (``cross_accumulate_``) and its energy ``E||y||^2`` -- what least-squares reconstruction needs
  (:mod:`~sketchprune.prune.reconstruct`, :mod:`~sketchprune.prune.sequential`).

Padding is skipped: rows where the batch's ``attention_mask`` is 0 are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .._progress import track
from ..accumulator import CovarianceAccumulator
from .adapters import get_adapter, layer_indices

#: statistic name -> (which module's input, description)
STATISTICS = ("down_in", "o_in", "mlp_in", "attn_in")
KINDS = ("diag", "full")

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(..., d) activations -> (T, d) rows, padded rows dropped."""
    x = x.reshape(-1, x.shape[-1])
    if mask is not None:
        x = x[mask.reshape(-1).to(x.device)]
    return x


class DiagMoments:
    """Per-feature streamed moments: count, sum and sum of squares (float64)."""

    kind = "diag"

    def __init__(self, dim: int, device):
        self.dim = dim
        self._sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self._sq = torch.zeros(dim, dtype=torch.float64, device=device)
        self._count = 0

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        x = _rows(x.detach(), mask)
        if x.shape[0] == 0:
            return
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        self._sum += torch.sum(x, dim=0, dtype=torch.float64)
        self._sq += torch.sum(x * x, dim=0, dtype=torch.float64)
        self._count += x.shape[0]

    @property
    def count(self) -> int:
        return self._count

    def _n(self) -> int:
        if self._count == 0:
            raise RuntimeError("sketchprune.prune: no calibration tokens were accumulated")
        return self._count

    def mean(self) -> torch.Tensor:
        """E[x] (float64)."""
        return self._sum / self._n()

    def diag(self) -> torch.Tensor:
        """E[x^2] per feature (float64)."""
        return self._sq / self._n()

    def variance(self) -> torch.Tensor:
        """E[x^2] - E[x]^2 per feature (population variance, float64, clamped at 0)."""
        return (self.diag() - self.mean() ** 2).clamp_min(0)

    def second_moment(self) -> torch.Tensor:
        raise RuntimeError("sketchprune.prune: this statistic was collected as 'diag'; "
                           "collect it as 'full' for the full second moment")


_DRAIN_ROWS = 8192


class FullMoments(DiagMoments):
    """Full second moment E[x x^T] (plus the mean), through :class:`CovarianceAccumulator`.

    With ``cross_dim``, :meth:`update` also takes targets ``y`` (..., cross_dim) aligned row by
    row with ``x`` and accumulates ``E[x y^T]`` (:meth:`cross`) and ``E||y||^2``
    (:meth:`target_energy`).  ``stage_rows`` is passed to the accumulator (0: no staging, each
    update is one kernel launch).

    ``dtype=torch.float64`` with float32 / bfloat16 / float16 inputs: the products are
    accumulated by the kernels in float32 (twice their float64 speed on CPUs) and the partial
    sums are added into float64 totals every ~8k rows (and before any read), so the rounding
    error does not grow with the stream (relative ~1e-7 sqrt(8192) at most); float64 inputs
    are accumulated in float64 throughout.  ``dtype=torch.float32`` keeps float32 totals.
    """

    kind = "full"

    def __init__(self, dim: int, device, budget=None, dtype=torch.float64, cross_dim: int | None = None,
                 stage_rows: int = 8192):
        super().__init__(dim, device)
        self._device, self._budget, self._dtype = device, budget, dtype
        self.cross_dim, self._stage_rows = cross_dim, stage_rows
        self._acc: CovarianceAccumulator | None = None
        self._sigma64: torch.Tensor | None = None   # float64 inputs: plain matmul
        self._cross64: torch.Tensor | None = None
        self._yy = torch.zeros((), dtype=torch.float64, device=device)
        # float64 totals of the kernels' float32 per-update partial sums (dtype float64)
        self._acc_sigma64: torch.Tensor | None = None
        self._acc_cross64: torch.Tensor | None = None
        self._pending = 0       # rows in the float32 partial sums since the last drain
        self._final: tuple[torch.Tensor, torch.Tensor | None] | None = None   # set by the first read

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None, y: torch.Tensor | None = None) -> None:
        x = x.detach()
        if self._final is not None:
            raise RuntimeError("sketchprune.prune: these statistics were already read; accumulate every batch "
                               "before reading second_moment() / cross()")
        if (y is None) != (self.cross_dim is None):
            raise ValueError(f"sketchprune.prune: targets y must be given exactly when cross_dim is set "
                             f"(cross_dim={self.cross_dim})")
        if y is not None:
            y = y.detach().to(device=x.device, dtype=x.dtype)
            if y.shape[:-1] != x.shape[:-1] or y.shape[-1] != self.cross_dim:
                raise ValueError(f"sketchprune.prune: targets of shape {tuple(y.shape)} do not match inputs "
                                 f"{tuple(x.shape)} (cross_dim {self.cross_dim})")
        m = None if mask is None else mask.to(device=x.device, dtype=torch.bool).reshape(x.shape[:-1])
        if x.dtype in _KERNEL_DTYPES:
            mixed = self._dtype == torch.float64
            if self._acc is None:
                self._acc = CovarianceAccumulator(self.dim, device=self._device,
                                                  dtype=torch.float32 if mixed else self._dtype,
                                                  cross_dim=self.cross_dim, budget=self._budget,
                                                  stage_rows=self._stage_rows)
            self._acc.update(x, y, mask=m)
            if mixed:
                self._pending += x.numel() // max(x.shape[-1], 1)
                if self._pending >= _DRAIN_ROWS:
                    self._drain()
        super().update(x, mask)     # sums / squares / count
        if x.dtype not in _KERNEL_DTYPES:
            r = _rows(x, m).to(torch.float64)
            if self._sigma64 is None:
                self._sigma64 = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=r.device)
            self._sigma64 += r.T @ r
            if y is not None:
                if self._cross64 is None:
                    self._cross64 = torch.zeros(self.dim, self.cross_dim, dtype=torch.float64, device=r.device)
                self._cross64 += r.T @ _rows(y, m).to(torch.float64)
        if y is not None:
            yr = _rows(y, m)
            self._yy += torch.sum(yr.to(torch.float64).square()).to(self._yy.device)

    def _drain(self) -> None:
        """Move the accumulator's float32 partial sums into the float64 totals."""
        self._pending = 0
        if self._acc_sigma64 is None:
            dev = self._acc.sigma.device
            self._acc_sigma64 = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=dev)
            if self.cross_dim is not None:
                self._acc_cross64 = torch.zeros(self.dim, self.cross_dim, dtype=torch.float64, device=dev)
        self._acc.drain_into(self._acc_sigma64, self._acc_cross64)

    def _total(self, acc64, acc_plain, part64, shape) -> torch.Tensor:
        """The normalised float64 total of the kernel part (``acc64``: the drained float64 sums,
        reused in place; else ``acc_plain()``: the accumulator's own normalised total) and the
        float64-input part ``part64``.  Same arithmetic as forming each piece out of place."""
        n = self._n()
        s = None
        if self._acc is not None and self._acc.count:
            c = self._acc.count
            s = acc64.div_(c).mul_(c / n) if acc64 is not None else acc_plain().to(torch.float64).mul_(c / n)
        if part64 is not None:
            s = part64 / n if s is None else s.add_(part64 / n)
        return torch.zeros(*shape, dtype=torch.float64, device=self._sum.device) if s is None else s

    def finish(self) -> None:
        """Fold every partial sum into the normalised float64 moments, once (the first read ends
        the accumulation): the drained float64 buffers become the results, the float32 kernel
        workspaces are freed, so a d x d statistic holds one float64 d x d array afterwards."""
        if self._final is not None:
            return
        self._n()
        mixed = self._acc is not None and self._acc.dtype != self._dtype
        if mixed:
            self._drain()
        acc = self._acc
        sigma = self._total(self._acc_sigma64 if mixed else None, lambda: acc.covariance(), self._sigma64,
                            (self.dim, self.dim))
        cross = None
        if self.cross_dim is not None:
            cross = self._total(self._acc_cross64 if mixed else None, lambda: acc.cross(), self._cross64,
                                (self.dim, self.cross_dim))
        self._final = (sigma, cross)
        self._acc = self._acc_sigma64 = self._acc_cross64 = self._sigma64 = self._cross64 = None

    def release(self) -> None:
        """Free the float64 moments (a caller that has taken what it needs); reading them
        afterwards is an error."""
        self.finish()
        self._final = self._RELEASED

    _RELEASED = (None, None)

    def second_moment(self) -> torch.Tensor:
        """E[x x^T] (float64).  The first read ends the accumulation (see :meth:`finish`); every
        read returns the same tensor, which callers must not modify."""
        self.finish()
        if self._final is self._RELEASED:
            raise RuntimeError("sketchprune.prune: these statistics were released")
        return self._final[0]

    def cross(self) -> torch.Tensor:
        """E[x y^T] (float64, dim x cross_dim); shared like :meth:`second_moment`."""
        if self.cross_dim is None:
            raise RuntimeError("sketchprune.prune: this statistic has no cross moment (cross_dim not set)")
        self.finish()
        if self._final is self._RELEASED:
            raise RuntimeError("sketchprune.prune: these statistics were released")
        return self._final[1]

    def target_energy(self) -> float:
        """E||y||^2 over the accumulated rows."""
        if self.cross_dim is None:
            raise RuntimeError("sketchprune.prune: this statistic has no targets (cross_dim not set)")
        return float(self._yy) / self._n()


@dataclass
class LayerStatistics:
    """The statistics of one decoder layer (``None`` where not collected)."""

    index: int
    down_in: DiagMoments | None = None
    o_in: DiagMoments | None = None
    mlp_in: DiagMoments | None = None
    attn_in: DiagMoments | None = None

    def get(self, name: str) -> DiagMoments:
        s = getattr(self, name)
        if s is None:
            raise KeyError(f"sketchprune.prune: statistic {name!r} was not collected for layer {self.index}")
        return s


@dataclass
class CalibrationStatistics:
    """Per-layer statistics plus what was collected."""

    layers: dict[int, LayerStatistics] = field(default_factory=dict)
    what: dict[str, str] = field(default_factory=dict)
    tokens: int = 0
    batches: int = 0

    def __getitem__(self, i: int) -> LayerStatistics:
        return self.layers[i]


DEFAULT_WHAT = {"down_in": "diag", "o_in": "full"}


def _normalise_what(what) -> dict[str, str]:
    if what is None:
        return dict(DEFAULT_WHAT)
    if isinstance(what, str) or not isinstance(what, Mapping):
        what = {w: "diag" for w in ([what] if isinstance(what, str) else what)}
    out = {}
    for k, v in what.items():
        if k not in STATISTICS:
            raise ValueError(f"sketchprune.prune: unknown statistic {k!r}; choose from {STATISTICS}")
        if v is None:
            continue
        if v not in KINDS:
            raise ValueError(f"sketchprune.prune: statistic kind must be one of {KINDS}, got {v!r}")
        out[k] = v
    return out


def _as_batch(batch, device) -> tuple[dict, torch.Tensor | None]:
    """A batch (dict with input_ids [+ attention_mask, ...] or a tensor of ids) -> model kwargs, mask."""
    if isinstance(batch, torch.Tensor):
        kwargs = {"input_ids": batch}
    elif isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise ValueError("sketchprune.prune: a calibration batch dict needs 'input_ids'")
        kwargs = dict(batch)
    else:
        raise TypeError(f"sketchprune.prune: a calibration batch must be a dict or a tensor of input_ids, "
                        f"got {type(batch).__name__}")
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    if kwargs["input_ids"].dim() == 1:
        kwargs["input_ids"] = kwargs["input_ids"][None]
        if isinstance(kwargs.get("attention_mask"), torch.Tensor) and kwargs["attention_mask"].dim() == 1:
            kwargs["attention_mask"] = kwargs["attention_mask"][None]
    am = kwargs.get("attention_mask")
    mask = None
    if isinstance(am, torch.Tensor):
        if am.shape != kwargs["input_ids"].shape:
            raise ValueError(f"sketchprune.prune: attention_mask shape {tuple(am.shape)} does not match "
                             f"input_ids {tuple(kwargs['input_ids'].shape)}")
        mask = am.to(torch.bool)
    kwargs.setdefault("use_cache", False)
    return kwargs, mask



def collect_statistics(model: nn.Module, batches: Iterable, layers=None, budget=None, progress: bool = True,
                       what=None, stat_dtype=torch.float64) -> CalibrationStatistics:
    """Stream calibration batches through ``model`` and collect per-layer input statistics.

    ``batches``: an iterable of dicts (``input_ids`` and optionally ``attention_mask``; other
    keys are passed to the model) or of ``input_ids`` tensors.  ``layers``: the layer indices to
    hook (default all).  ``what``: statistic name -> ``"diag"``/``"full"`` (default
    ``{"down_in": "diag", "o_in": "full"}``; see the module doc).  ``budget`` caps each full
    accumulator's memory (see :class:`~sketchprune.CovarianceAccumulator`); ``stat_dtype`` is
    the full accumulators' dtype.  Runs under ``torch.no_grad()`` in eval mode; hooks are
    removed and the training flag restored even on error.  NaN/Inf in a layer's output (on
    unpadded tokens) raises :class:`~sketchprune.prune.NonFiniteActivations` naming the layer.
    """
    adapter = get_adapter(model)
    all_layers = adapter.layers(model)
    idx = layer_indices(len(all_layers), layers)
    what = _normalise_what(what)
    stats = CalibrationStatistics(what=dict(what))
    state = {"mask": None}
    handles = []

    def make_stat(kind, dim, device):
        return FullMoments(dim, device, budget, stat_dtype) if kind == "full" else DiagMoments(dim, device)

    def hook_for(stat):
        def pre_hook(module, args, kwargs=None):
            x = args[0] if args else next(iter(kwargs.values()))
            mask = state["mask"]
            # (OPT's FFN sees the tokens flattened to (B*T, d), in the mask's order)
            if mask is not None and tuple(mask.shape) != tuple(x.shape[:-1]) \
                    and not (x.dim() == 2 and x.shape[0] == mask.numel()):
                mask = None if mask.all() else _raise_mask(mask, x)
            stat.update(x, mask)
        return pre_hook

    was_training = model.training
    try:
        for i in idx:
            layer = all_layers[i]
            ffn, attn = adapter.ffn(layer), adapter.attention(layer)
            ls = LayerStatistics(i)
            modules = {"down_in": ffn.down, "o_in": attn.o, "mlp_in": ffn.up if ffn.gate is None else ffn.gate,
                       "attn_in": attn.q}
            for name, kind in what.items():
                mod = modules[name]
                s = make_stat(kind, mod.in_features, mod.weight.device)
                setattr(ls, name, s)
                handles.append(mod.register_forward_pre_hook(hook_for(s)))
            stats.layers[i] = ls
        from .streams import finite_output_hooks   # (streams imports this module)
        word = "decoder" if adapter.causal else "encoder"
        handles += finite_output_hooks([(f"{word} layer {j}", l) for j, l in enumerate(all_layers)], state,
                                       "calibration statistics")
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            for batch in track(batches, progress, "calibration"):
                kwargs, mask = _as_batch(batch, device)
                state.update(mask=mask, batch=stats.batches)
                model(**kwargs)
                stats.batches += 1
                stats.tokens += int(mask.sum()) if mask is not None else kwargs["input_ids"].numel()
    finally:
        for h in handles:
            h.remove()
        state["mask"] = None
        model.train(was_training)
    return stats


def _raise_mask(mask, x):
    raise ValueError(f"sketchprune.prune: attention mask of shape {tuple(mask.shape)} does not match "
                     f"activations of shape {tuple(x.shape)}")
