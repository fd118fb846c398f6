"""The pruning plan -- which units each layer kept -- recovered from the weights themselves.

Slicing copies the kept rows of ``gate_proj`` / ``up_proj`` (FFN channels; ``fc1`` and the like
when the FFN is not gated), of ``q_proj`` (query
heads) and of ``k_proj`` / ``v_proj`` (KV heads) unchanged; reconstruction re-fits only the
*input* columns of ``down_proj`` / ``o_proj``.  So a digest of each unit's rows, taken before
pruning, identifies every kept unit in the pruned model exactly, whatever the pruning pipeline
reports.  :func:`unit_digests` takes the digests, :func:`recover_plan` matches them.

Units with identical rows (e.g. all-zero channels) are interchangeable: the lowest unused index
is taken, which gives a model identical to the pruned one.
"""

from __future__ import annotations

import hashlib

import torch

from .adapters import get_adapter

__all__ = ["PlanError", "unit_digests", "recover_plan"]


class PlanError(RuntimeError):
    """The pruned model's units cannot be matched to the dense model's."""


def _digests(*mats: torch.Tensor, groups: int) -> list[bytes]:
    """One digest per group of consecutive rows, over all ``mats`` together."""
    blocks = []
    for m in mats:
        w = m.detach().to("cpu").contiguous()
        raw = w.view(torch.uint8).reshape(groups, -1).numpy()
        blocks.append(raw)
    return [hashlib.blake2b(b"".join(b[g].tobytes() for b in blocks), digest_size=16).digest()
            for g in range(groups)]


def unit_digests(model) -> list[dict[str, list[bytes]]]:
    """Per layer: digests of the FFN channels (gate+up rows, or up), query heads (q rows) and KV heads
    (k+v rows)."""
    adapter = get_adapter(model)
    out = []
    for layer in adapter.layers(model):
        ffn, attn, hs = adapter.ffn(layer), adapter.attention(layer), adapter.head_structure(layer)
        first = [lin for lin in (ffn.gate, ffn.up) if lin is not None]  # the Linears whose rows are channels
        out.append({"ffn_channels": _digests(*(lin.weight for lin in first), groups=ffn.up.out_features),
                    "q_heads": _digests(attn.q.weight, groups=hs.num_heads),
                    "kv_heads": _digests(attn.k.weight, attn.v.weight, groups=hs.num_kv_heads)})
    return out


def _match(before: list[bytes], after: list[bytes], what: str, layer: int) -> list[int]:
    pool: dict[bytes, list[int]] = {}
    for i, d in enumerate(before):
        pool.setdefault(d, []).append(i)
    kept = []
    for j, d in enumerate(after):
        if not pool.get(d):
            raise PlanError(f"sketchprune.prune: layer {layer}: {what} {j} of the pruned model matches no unit "
                            f"of the dense model (were its weights changed?)")
        kept.append(pool[d].pop(0))
    return kept


def recover_plan(digests_before: list[dict], pruned_model) -> list[dict]:
    """``[{"layer", "ffn_channels", "q_heads", "kv_heads"}]``: the dense-model indices of the units
    each layer of ``pruned_model`` kept, in the pruned model's order."""
    after = unit_digests(pruned_model)
    if len(after) != len(digests_before):
        raise PlanError(f"sketchprune.prune: the pruned model has {len(after)} layers, the dense one "
                        f"{len(digests_before)}")
    plan = []
    for i, (b, a) in enumerate(zip(digests_before, after)):
        entry = {"layer": i}
        for key in ("ffn_channels", "q_heads", "kv_heads"):
            entry[key] = _match(b[key], a[key], key.replace("_", " ")[:-1], i)
        plan.append(entry)
    return plan
