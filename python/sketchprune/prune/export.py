"""Writing a pruned model directory atomically, and checking outputs before any work.

:func:`check_output_dir` / :func:`check_output_file` run *before* pruning: a missing or
unwritable parent, an output that exists (unless overwriting) or a directory where a file is
expected is an :class:`OutputError` at once, not after an hour of work.

:func:`save_pruned_dir` writes everything -- ``save_pretrained`` weights and config (the sliced
structure recorded by :func:`~sketchprune.prune.slicing.record_structure`), the tokenizer, and
extra JSON files (``pruning_plan.json``, ``report.json``) -- into a temporary directory beside the
target, optionally checks that the saved model reloads and reproduces the in-memory model's
logits, and only then moves it into place with ``os.replace``.  Any error removes the temporary
directory, so the target is either complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .._signals import deferred_signals
from .measure import _accepts

__all__ = ["OutputError", "check_output_dir", "check_output_file", "write_json_atomic", "save_pruned_dir",
           "stock_loadable", "load_saved"]


class OutputError(ValueError):
    """An output path cannot be written."""


def _check_parent(path: Path, what: str) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"{what} {str(path)!r}: the directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{what} {str(path)!r}: {str(parent)!r} is not a directory")
    try:  # the real test: can a file be created there (os.access is wrong for root and ACLs)
        probe = tempfile.mkdtemp(prefix=f".{path.name}.probe-", dir=parent)
        os.rmdir(probe)
    except OSError as e:
        raise OutputError(f"{what} {str(path)!r}: cannot write into {str(parent)!r} ({e.strerror or e})") from None
    return parent


def check_output_dir(path, overwrite: bool = False) -> Path:
    """Check that the model directory ``path`` can be created (before any work); returns it."""
    p = Path(path)
    here = Path.cwd().resolve()
    if p.name in ("", ".", "..") or p.resolve() == here or p.resolve() in here.parents:
        raise OutputError(f"output directory {str(p)!r} is the current directory or one above it, which cannot be "
                          f"replaced as a whole: give the name of a new directory")
    if p.exists() and not p.is_dir():
        raise OutputError(f"output directory {str(p)!r} exists and is not a directory")
    if p.exists() and any(p.iterdir()) and not overwrite:
        raise OutputError(f"output directory {str(p)!r} already exists and is not empty (use --overwrite)")
    _check_parent(p, "output directory")
    return p


def check_output_file(path) -> Path:
    """Check that the file ``path`` can be written (before any work); returns it."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"output file {str(p)!r} is a directory")
    _check_parent(p, "output file")
    return p


def _json_text(obj) -> str:
    return json.dumps(obj, indent=1, default=str, allow_nan=True) + "\n"


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace`` (with the
    permissions of an ordinary new file: ``mkstemp`` creates it private)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_json_text(obj))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stock_loadable(model) -> bool:
    """Whether the stock ``from_pretrained`` of transformers rebuilds ``model``'s sizes from its
    config: every layer has the same sizes and the standard config fields hold them (see
    :func:`~sketchprune.prune.slicing.record_structure`; e.g. a head count that does not divide
    ``hidden_size`` cannot be written there) and no layer has a bias the architecture lacks."""
    from .adapters import get_adapter

    cfg = model.config
    layers = getattr(cfg, "sketchprune_layers", None) or []
    if any(sizes.get("added_biases") for sizes in layers):
        return False  # the stock classes would build these Linears without their biases
    fields = get_adapter(model).config_fields
    return all(getattr(cfg, fields[k], None) == v for sizes in layers for k, v in sizes.items() if k in fields)


def stock_class(config):
    """The ``transformers`` class a saved directory's config names (``architectures[0]``: a
    ``BertModel`` stays a ``BertModel``, a ``...ForMaskedLM`` keeps its head), else
    ``AutoModelForCausalLM``."""
    import transformers

    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    return cls if cls is not None and hasattr(cls, "from_pretrained") else transformers.AutoModelForCausalLM


def load_saved(path, **kwargs):
    """Load a model directory written by :func:`save_pruned_dir` (per-layer sizes through
    :func:`~sketchprune.prune.load_pruned`) or any Hugging Face model directory, as the class its
    config names (see :func:`stock_class`)."""
    import transformers

    from .serialization import load_pruned

    config = transformers.AutoConfig.from_pretrained(path)
    if getattr(config, "sketchprune_layers", None):
        return load_pruned(path, **kwargs)
    return stock_class(config).from_pretrained(path, **kwargs)


def _outputs(model, x):
    """The logits, or for a backbone without a head its last hidden states."""
    out = model(input_ids=x, **({"use_cache": False} if _accepts(model, "use_cache") else {}))
    return (out.logits if getattr(out, "logits", None) is not None else out[0]).double()


def _verify(model, tmp: Path, input_ids: torch.Tensor, stock: bool) -> dict:
    """Reload ``tmp`` (with the stock loader when ``stock``) and compare logits with ``model``."""
    import transformers

    from .serialization import load_pruned

    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    attn = getattr(model.config, "_attn_implementation", None)
    kw = {"dtype": dtype, **({"attn_implementation": attn} if attn else {})}
    loader = stock_class(model.config).from_pretrained if stock else load_pruned
    loaded = loader(tmp, **kw).to(dev).eval()
    x = input_ids.to(dev)
    x = x[None] if x.dim() == 1 else x
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            a = _outputs(model, x)
            b = _outputs(loaded, x)
    finally:
        model.train(was)
    diff = float((a - b).abs().max())
    scale = float(a.abs().max()) or 1.0
    tol = 8 * torch.finfo(dtype).eps * scale * max(1, x.shape[-1]) ** 0.5
    if not diff <= tol:
        raise RuntimeError(f"sketchprune.prune: the saved model does not reproduce the pruned model "
                           f"(max |logit difference| {diff:.3g} > {tol:.3g}); nothing was written")
    return {"max_abs_logit_diff": diff, "tokens": int(x.numel())}


def save_pruned_dir(model, out, tokenizer=None, json_files: dict | None = None, overwrite: bool = False,
                    verify_input: torch.Tensor | None = None) -> dict:
    """Save ``model`` (+ tokenizer, + ``{name: object}`` JSON files) to ``out`` atomically.

    Returns ``{"dir", "files", "load_with", "verify"}``.  ``verify_input``: token ids on which the
    reloaded model must give the in-memory model's logits (else nothing is written).
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent if str(out.parent) else "."))
    old = None
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary directory
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, obj in (json_files or {}).items():
            (tmp / name).write_text(_json_text(obj))
        stock = stock_loadable(model)
        info = {"dir": str(out.resolve()), "files": sorted(p.name for p in tmp.iterdir()),
                "load_with": (f"transformers.{stock_class(model.config).__name__}.from_pretrained" if stock
                              else "sketchprune.load_pruned"),
                "verify": None if verify_input is None else _verify(model, tmp, verify_input, stock)}
        if out.exists():  # overwrite: move the old one aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=tmp.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    except BaseException:
        with deferred_signals():   # a second Ctrl-C must not interrupt the clean-up
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None and not out.exists() and (old / out.name).exists():
                os.replace(old / out.name, out)  # put the previous output back
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        # the new output is in place; an interrupt now is raised once the old copy is gone
        with deferred_signals():
            shutil.rmtree(old, ignore_errors=True)
    return info
