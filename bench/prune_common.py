"""Small helpers shared by the SmolLM2 pruning experiment scripts in bench/ (prune_smollm2.py,
prune_study.py): parameter counts, the per-layer part of a ``prune_model`` report kept in the
result files, and atomic JSON writes."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

#: per-layer fields of a prune_model report kept in the result JSONs (one-shot reports name the
#: kept units ffn_kept / q_heads_kept / kv_heads_kept, sequential ones kept_channels / kept_heads /
#: kept_kv_heads; refit errors are dicts {"down": ..., "o": ...} or absent without reconstruction)
LAYER_KEYS = ("layer", "kept_channels", "kept_heads", "kept_kv_heads", "ffn_kept", "ffn_total", "q_heads_kept",
              "q_heads_total", "kv_heads_kept", "kv_heads_total", "params_before", "params_after", "lambda",
              "recon_rel_error", "heldout_rel_error", "no_refit_rel_error", "no_refit_heldout_rel_error",
              "stream_rel_error", "recovery", "block_recon", "seconds")


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_records(report: dict) -> list[dict]:
    """The per-layer entries of a prune_model report, restricted to :data:`LAYER_KEYS`."""
    return [{k: layer[k] for k in LAYER_KEYS if k in layer} for layer in report["layers"]]


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:   # numpy / torch scalars
        return _jsonable(x.item())
    return x


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary sibling and ``os.replace``, so a reader
    (or an interrupted run) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(obj), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
