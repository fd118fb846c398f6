"""Block and cross-block reconstruction: re-fit all of a pruned block's Linears by Adam.

The closed-form refits of :mod:`~sketchprune.prune.reconstruct` fit one Linear at a time
(o_proj, down_proj) toward that Linear's own target.  Block reconstruction (the ``block`` and
``cross-block`` options of the reconstruction literature, e.g. Shin et al. 2024) instead fits the
whole decoder layer's output: with ``f(x; theta)`` the pruned block on the pruned-stream input
``x`` and ``y*`` the dense model's hidden state after that block (the dense stream), each Adam
step on one minibatch ``B`` of fitting calibration tokens minimises

    loss_B(theta) = sum_{t in B} w_t ||f(x_t; theta) - y*_t||^2 / sum_{t in B} w_t ||y*_t||^2
                    + prox * sum_p ||theta_p - theta0_p||^2 / ||theta0_p||^2

(padding skipped; ``w_t = 1``, or ``1/||y*_t||^2`` with ``token_weighting="relative"`` so that
every token's relative error counts alike).  Each minibatch is normalised by its own target
energy, so every minibatch counts alike in an epoch -- on SmolLM2 a few sequences carry massive
activations that would otherwise decide the fit alone -- while the reported errors are pooled
over all tokens of a set (sum of errors / sum of energies); the reported in-sample error can
therefore rise while the training loss falls.  ``theta`` is every weight and bias of q/k/v/o
and gate/up/down of the block(s); the norms (and any other parameter, e.g. per-head q/k norms)
stay frozen.  ``cross-block`` trains two consecutive blocks
jointly: the input is the pruned stream before the first of them and the target the dense stream
after the second.

Optimiser: Adam, one parameter group per tensor with step size ``lr * rms(W)`` (``W`` the
weight of the tensor's Linear, so ``lr`` is relative to the weights' scale and one value serves
every layer); one minibatch = one calibration batch (its sequences), the fitting batches in a
seeded random order each epoch.  After every epoch the error on the **held-out calibration
batches** is measured; the weights with the lowest held-out error so far are kept, training
stops after ``patience`` epochs without improvement, and the best weights are installed at the
end -- the starting weights (epoch 0) when no epoch beat them, so the held-out error is never
worse than before the block refit.  The report gives the epochs run, the best epoch, the
held-out curve and the relative errors (squared, as the closed-form refits report them) of the
block output in-sample and held out, before and after.  A non-finite activation during an epoch
(a step size far too large) counts as an infinitely bad epoch: training stops, ``diverged`` is
reported and the best weights so far are installed.

Defaults (``EPOCHS = 4``, ``LR = 3e-3``, ``PATIENCE = 2``, ``PROX = 0``) were chosen on the held-out
calibration batches of SmolLM2-135M (20% sigma, 16 x 512 calibration tokens, layers 0, 1, 15, 16):
at ``lr = 1e-3`` the held-out error fell more slowly, at ``1e-2`` it was noisy and rose after the
first epoch; the curves are noisy from epoch to epoch, hence a patience of 2; ``prox = 10`` made
the held-out error of layers 0 and 1 worse than ``prox = 0`` (docs/pruning.md).

Costs, in forward passes of the block(s) over the calibration tokens: 1 (errors before) + per
epoch about 3 x the fitting share (forward + backward) + the held-out share, + 1 (errors after,
which also writes the new pruned stream, so the caller need not propagate again).  Device
memory: the block(s)' trainable weights 5 times more (gradients, two Adam moments, best and
starting copies) and one minibatch's activations kept for the backward pass
(:func:`training_bytes`).

Half-precision models (bf16 / fp16 weights): Adam on half-precision weights loses the small
updates, so the block(s) are trained on a float32 copy -- every parameter and buffer of the
block(s) upcast for the training, its inputs and call arguments (position embeddings, masks)
too -- and cast back at the end.  The reported ``heldout_error_before`` / ``_after`` and
``fit_error_*`` are measured with the weights in the model's own precision; ``heldout_curve``
is the float32 training curve (its epoch 0 is the upcast starting weights).  If rounding the
best float32 weights back to half precision leaves the held-out error above the starting one,
the starting weights are restored, so the held-out error is never worse than before in the
model's precision either.  The float32 copy costs the block(s)' parameters again at 4 bytes each
(:func:`training_bytes` is given 4-byte items for the training).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from .._progress import progress_bar
from .streams import LayerCall, NonFiniteActivations, _map_tensors, run_layer

#: ``recon`` values: per-Linear closed-form refits only, + block, + two-block joint refits
RECON_MODES = ("layer", "block", "cross-block")

#: defaults, chosen on SmolLM2-135M's held-out calibration batches (docs/pruning.md)
EPOCHS = 4
LR = 3e-3
PROX = 0.0
PATIENCE = 2


def check_recon(recon) -> str:
    if recon not in RECON_MODES:
        raise ValueError(f"sketchprune.prune: recon must be one of {', '.join(RECON_MODES)}, got {recon!r}")
    return recon


def check_options(epochs, lr, prox, patience) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"sketchprune.prune: block reconstruction epochs must be an integer >= 1, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"sketchprune.prune: block reconstruction lr must be a positive number, got {lr!r}")
    if not (isinstance(prox, (int, float)) and math.isfinite(prox) and prox >= 0):
        raise ValueError(f"sketchprune.prune: block reconstruction prox must be a number >= 0, got {prox!r}")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"sketchprune.prune: block reconstruction patience must be an integer >= 1, got {patience!r}")


def block_linears(adapter, layer) -> list[nn.Linear]:
    """The trainable Linears of one block: q, k, v, o, (gate,) up, down."""
    a, f = adapter.attention(layer), adapter.ffn(layer)
    return [a.q, a.k, a.v, a.o, *f.first, f.down]


def training_bytes(params: int, item: int, activations: int) -> int:
    """Device bytes of training one set of blocks with ``params`` trainable parameters of ``item``
    bytes: gradients, two Adam moments, the best and the starting copy, and the activations of
    one minibatch kept for the backward pass plus their gradients (``2 x activations``)."""
    return 5 * params * item + 2 * activations


def _errors(y: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None, relative: bool):
    """(sum of squared errors, sum of target energy) over the unpadded tokens, float64 graph."""
    d = (y - t).to(torch.float64).square().sum(-1)
    e = t.to(torch.float64).square().sum(-1)
    if relative:
        d = torch.where(e > 0, d / e, torch.zeros_like(d))
        e = (e > 0).to(torch.float64)
    if mask is not None:
        m = mask.to(d.device).reshape(d.shape)
        d, e = d[m], e[m]
    return d.sum(), e.sum()


class BlockRecon:
    """One block-reconstruction problem (see the module doc).

    ``blocks``: the consecutive decoder layers trained jointly; ``calls[k][b]``: the recorded
    call of ``blocks[k]`` on batch ``b``; ``inputs``: per batch, the pruned stream entering the
    first block (host); ``targets``: per batch, the dense stream after the last block (host);
    ``masks``, ``held``: per batch; ``linears``: the Linears to train.
    """

    def __init__(self, blocks, calls, linears, inputs, targets, masks, held, device, *, epochs=EPOCHS, lr=LR,
                 prox=PROX, patience=PATIENCE, seed=0, token_weighting="none", progress=False, where="block",
                 host="cpu"):
        check_options(epochs, lr, prox, patience)
        half = (torch.float16, torch.bfloat16)
        # trained on a float32 copy when any weight of the block(s) is in half precision
        self.upcast = any(p.dtype in half for blk in blocks for p in blk.parameters())
        self.cast = None            # the dtype inputs are cast to while the blocks are upcast
        self.blocks, self.calls, self.linears = blocks, calls, linears
        self.inputs, self.targets, self.masks, self.held = inputs, targets, masks, held
        self.device, self.epochs, self.lr, self.prox, self.patience = device, epochs, float(lr), float(prox), patience
        self.seed, self.relative, self.progress, self.where = seed, token_weighting == "relative", progress, where
        self.host = torch.device(host)

    def _chain(self, b: int) -> list[torch.Tensor]:
        """Outputs of every block on batch ``b`` (gradients flow if enabled)."""
        h, outs = self.inputs[b], []
        for k, blk in enumerate(self.blocks):
            call = self.calls[k][b]
            if self.cast is not None:
                h = h.to(self.cast)
                up = lambda t: t.to(self.cast) if t.is_floating_point() else t  # noqa: E731
                call = LayerCall(_map_tensors(call.args, up), _map_tensors(call.kwargs, up))
            h = run_layer(blk, h, call, self.device, self.masks[b],
                          f"the output of {self.where} (block {k + 1} of {len(self.blocks)}, calibration batch {b})")
            outs.append(h)
        return outs

    def _set_precision(self, upcast: bool, dtypes: dict | None = None) -> dict:
        """Upcast every floating parameter / buffer of the blocks to float32 (returns their
        dtypes) or, with ``upcast=False``, cast them back to ``dtypes``.  Parameter objects are
        kept (only their data changes), so optimiser groups and the Linears stay valid."""
        old = {}
        with torch.no_grad():
            for blk in self.blocks:
                for t in list(blk.parameters()) + list(blk.buffers()):
                    if not t.is_floating_point():
                        continue
                    if upcast:
                        old[id(t)] = t.dtype
                        t.data = t.data.to(torch.float32)
                    elif id(t) in dtypes:
                        t.data = t.data.to(dtypes[id(t)])
        self.cast = torch.float32 if upcast else None
        return old

    def _error(self, which: list[int], write=None) -> float:
        """Relative error over batches ``which`` (no gradients); ``write``: per block a list into
        which the block's outputs are stored (host), batch by batch."""
        num = den = 0.0
        with torch.no_grad():
            for b in which:
                outs = self._chain(b)
                n, d = _errors(outs[-1], self.targets[b].to(outs[-1].device), self.masks[b], self.relative)
                num, den = num + float(n), den + float(d)
                if write is not None:
                    for lst, y in zip(write, outs):
                        lst[b] = y.detach().to(self.host)
        return num / den if den > 0 else 0.0

    def _step(self, opt, b: int, params, start, norms) -> None:
        """One Adam step on batch ``b``: the relative error of the last block's output (+ prox)."""
        opt.zero_grad(set_to_none=True)
        y = self._chain(b)[-1]
        n, d = _errors(y, self.targets[b].to(y.device), self.masks[b], self.relative)
        loss = n / d.clamp_min(1e-300)
        if self.prox > 0:
            for p, s, w in zip(params, start, norms):
                loss = loss + self.prox * (p - s).to(torch.float64).square().sum() / w
        loss.backward()
        opt.step()

    def run(self, write=None) -> dict:
        """Train, install the best weights, and (``write``) store the final outputs; returns the report."""
        t0 = time.perf_counter()
        fit = [b for b, h in enumerate(self.held) if not h]
        hold = [b for b, h in enumerate(self.held) if h]
        if not fit or not hold:
            raise ValueError("sketchprune.prune: block reconstruction needs fitting and held-out calibration batches")
        block_params = [p for blk in self.blocks for p in blk.parameters()]
        flags = [p.requires_grad for p in block_params]
        if self.upcast:     # the errors before, in the model's own precision
            fit_before, held_before = self._error(fit), self._error(hold)
            original = [p.detach().clone() for p in block_params]
        dtypes, params, bar = None, [], None
        try:
            if self.upcast:
                dtypes = self._set_precision(True)
            groups = []
            for lin in self.linears:
                scale = float(lin.weight.detach().double().square().mean().sqrt())
                for p in (lin.weight, lin.bias):
                    if p is not None:
                        params.append(p)
                        groups.append({"params": [p], "lr": self.lr * (scale if scale > 0 else 1.0)})
            start = [p.detach().clone() for p in params]
            norms = [max(float(s.double().square().sum()), 1e-30) for s in start]
            if not self.upcast:
                fit_before, held_before = self._error(fit), self._error(hold)
            curve0 = self._error(hold) if self.upcast else held_before
            best, best_epoch, curve, bad = curve0, 0, [curve0], 0
            best_state = None
            gen = torch.Generator().manual_seed(int(self.seed))
            bar = progress_bar(self.progress, total=self.epochs, desc=f"block recon {self.where}", leave=False)
            for p in block_params:
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.Adam(groups, betas=(0.9, 0.999), eps=1e-12)
            epochs_run, diverged = 0, False
            for epoch in range(1, self.epochs + 1):
                order = torch.randperm(len(fit), generator=gen).tolist()
                try:
                    with torch.enable_grad():
                        for i in order:
                            self._step(opt, fit[i], params, start, norms)
                    err = self._error(hold)
                except NonFiniteActivations:     # the step size was too large: this epoch counts as worst
                    err, diverged = math.inf, True
                epochs_run = epoch
                curve.append(err)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(heldout=f"{err:.4g}")
                if err < best:
                    best, best_epoch, bad = err, epoch, 0
                    best_state = [p.detach().clone() for p in params]
                else:
                    bad += 1
                    if bad >= self.patience or diverged:
                        break
            del opt
            with torch.no_grad():
                for p, s in zip(params, best_state if best_state is not None else start):
                    p.copy_(s)
        finally:
            for p, f in zip(block_params, flags):
                p.requires_grad_(f)
            for p in params:
                p.grad = None
            if bar is not None:
                bar.close()
            if dtypes is not None:      # back to the model's precision, also when training failed
                self._set_precision(False, dtypes)
        reverted = False
        if self.upcast and best_state is not None and self._error(hold) > held_before:
            with torch.no_grad():       # rounding to half precision undid the gain: keep the start
                for p, s in zip(block_params, original):
                    p.copy_(s)
            reverted = True
        fit_after = self._error(fit, write)        # the held-out batches' outputs written too:
        held_after = self._error(hold, write)      # same weights: = curve[best_epoch] (unless upcast)
        precision = {"train_dtype": "float32 copy of half-precision weights" if self.upcast else "model dtype",
                     "reverted_after_rounding": reverted}
        return {"epochs_run": epochs_run, "best_epoch": best_epoch, "diverged": diverged, "lr": self.lr,
                "prox": self.prox, **precision,
                "trainable": "q/k/v/o/gate/up/down weights and biases (norms frozen)",
                "trainable_params": sum(p.numel() for p in params),
                "fit_error_before": fit_before, "fit_error_after": fit_after,
                "heldout_error_before": held_before, "heldout_error_after": held_after,
                "heldout_curve": curve, "seconds": time.perf_counter() - t0}
