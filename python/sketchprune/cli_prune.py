"""Command line: ``sketchprune prune`` and ``sketchprune eval``.

``sketchprune prune --model smollm2-135m|DIR --sparsity 0.2 --criterion sigma [--reconstruct]
[--recon layer|block|cross-block] --calib wiki|austen|self|FILE --calib-tokens 16384 --seq-len 512
[--budget 8GiB] [--device cpu|cuda [--onload]] --out DIR [--report report.json] [--quiet]`` prunes a model,
writes the smaller model directory (weights, config, tokenizer, ``pruning_plan.json``,
``report.json``) atomically and the report.

``sketchprune eval --model DIR|smollm2-135m --text wiki|austen|FILE --seq-len 512 --tokens 32768
[--report eval.json] [--quiet]`` measures perplexity and top-1 next-token accuracy on the
evaluation slice of the text (never the calibration slice; see ``docs/pruning.md``).

Arguments and outputs are checked before any model is loaded; a bad input ends with a one-line
message and exit status 2 (``SKETCHPRUNE_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import os
import sys
import time

EXIT_USAGE = 2


def _progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
            "float64": torch.float64}[name]


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA device is available")


def _fmt_bytes(n) -> str:
    from .budget import format_bytes

    return "n/a" if n is None else format_bytes(n)


# ------------------------------------------------------------------------------------------ prune

def run_prune(args) -> int:
    import torch

    from .prune.api import calibration_batches, load_model, prune, resolve_model_dir
    from .prune.checks import check_args, check_call, check_model
    from .prune.export import check_output_dir, check_output_file, save_pruned_dir, write_json_atomic

    t0 = time.perf_counter()
    # 1. everything that can be checked without loading anything
    check_args(args.sparsity, args.criterion, args.budget)
    if args.recon != "layer":
        args.reconstruct = True       # block refits start from the closed-form ones
    if args.out is None and args.report is None:
        raise ValueError("nothing to write: give --out DIR and/or --report FILE")
    options = {}
    if args.head_mode:
        options["head_mode"] = args.head_mode
    if args.attn_sparsity is not None:
        if not 0.0 <= args.attn_sparsity < 1.0:      # also NaN
            raise ValueError(f"--attn-sparsity must be in [0, 1), got {args.attn_sparsity}")
        options["attn_sparsity"] = args.attn_sparsity
    if args.flap_bias is not None:
        if args.criterion != "flap":
            raise ValueError(f"--flap-bias applies to --criterion flap only (got --criterion {args.criterion})")
        if args.reconstruct and args.flap_bias != "none":
            raise ValueError("--reconstruct re-fits the weights itself: use --flap-bias none (or leave it out) with it")
        options["flap_bias"] = args.flap_bias
    for name, v in (("--seq-len", args.seq_len), ("--calib-tokens", args.calib_tokens)):
        if v < 1:
            raise ValueError(f"{name} must be a positive number of tokens, got {v}")
    check_call(args.criterion, args.seed, args.batch_size, args.seq_len, args.calib_tokens, args.device,
               dict(options))      # the library's own checks of the same values (before any work)
    if args.calib_tokens < args.seq_len:
        raise ValueError(f"--calib-tokens {args.calib_tokens} is shorter than one sequence (--seq-len {args.seq_len})")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.calib == "self" and not args.self_temperature > 0:
        raise ValueError(f"--self-temperature must be > 0, got {args.self_temperature}")
    if args.calib == "self" and args.self_top_k < 0:
        raise ValueError(f"--self-top-k must be >= 0 (0 = all tokens), got {args.self_top_k}")
    _check_device(args.device)
    if args.out is not None:
        check_output_dir(args.out, overwrite=args.overwrite)
    if args.report is not None:
        check_output_file(args.report)
    if args.calib not in ("wiki", "austen", "self") and not os.path.isfile(args.calib):
        raise ValueError(f"--calib {args.calib!r} is neither wiki, austen, self nor an existing file")
    resolve_model_dir(args.model)  # missing path / unsupported architecture, before reading weights
    # 2. model and calibration data
    _say(args, f"loading {args.model} ...")
    model, tok = load_model(args.model, device="cpu" if args.onload else args.device, dtype=_dtype(args.dtype))
    progress = _progress(args)
    check_model(model, {}, args.calib, args.seq_len)    # before self-generated calibration runs the model
    self_opts = {"temperature": args.self_temperature, "top_k": args.self_top_k}
    batches, desc = calibration_batches(args.calib, model=model, tokenizer=tok, seq_len=args.seq_len,
                                        calib_tokens=args.calib_tokens, batch_size=args.batch_size,
                                        seed=args.seed, progress=progress, self_options=self_opts)
    desc["source"] = args.calib
    # 3. prune (in place: the CLI owns the model; the dense measurement comes first)
    recon = "" if args.recon == "layer" else f" ({args.recon})"
    _say(args, f"pruning {args.sparsity:.0%} with {args.criterion}"
               f"{' + reconstruction' + recon if args.reconstruct else ''} "
               f"on {desc.get('tokens')} calibration tokens ...")
    model, report = prune(model, batches, sparsity=args.sparsity, criterion=args.criterion,
                          reconstruct=args.reconstruct, recon=args.recon, budget=args.budget, inplace=True,
                          tokenizer=tok, seq_len=args.seq_len, seed=args.seed, measure=not args.no_measure,
                          progress=progress, device=args.device if args.onload else None, onload=args.onload,
                          **options)
    report["model"] = args.model
    report["calibration"] = {**desc, **{k: v for k, v in report["calibration"].items() if k not in desc}}
    report["command"] = ["sketchprune", "prune"] + list(args.argv)
    # 4. outputs: the model directory first (atomically), then the report file
    if args.out is not None:
        plan = {"model": args.model, "criterion": args.criterion, "sparsity": args.sparsity,
                "layers": report.get("plan")}
        verify = None if args.no_verify else report_input(batches)
        report["output"] = save_pruned_dir(model, args.out, tokenizer=tok, overwrite=args.overwrite,
                                           json_files={"pruning_plan.json": plan, "report.json": report},
                                           verify_input=verify)
    report["total_time_s"] = time.perf_counter() - t0
    if args.report is not None:
        write_json_atomic(args.report, report)
    _summary_prune(args, report)
    return 0


def report_input(batches):
    """A short input for the reload check: the first calibration sequence, up to 128 tokens."""
    b = batches[0]
    ids = b["input_ids"] if isinstance(b, dict) else b
    return ids.reshape(-1, ids.shape[-1])[:1, :128].cpu()


def _summary_prune(args, r) -> None:
    if args.quiet:
        return
    p, s = r["params"], r["sparsity"]
    lines = [f"params {p['before']:,} -> {p['after']:,} ({p['removed_fraction']:.1%} of the model removed; "
             f"block sparsity {s['achieved']:.3f} of {s['requested']})",
             f"pruning {r['time_s']:.1f} s, peak memory {_fmt_bytes(r['peak_memory_bytes'])}"]
    inf = r.get("inference")
    if inf:
        d, q = inf["dense"], inf["pruned"]
        lines.append(f"forward {d['input_shape']}: dense {d['latency_s'] * 1e3:.1f} ms / "
                     f"{_fmt_bytes(d['peak_memory_bytes'])}, pruned {q['latency_s'] * 1e3:.1f} ms / "
                     f"{_fmt_bytes(q['peak_memory_bytes'])} (speedup {inf['speedup']:.2f}x)")
    if r.get("output"):
        lines.append(f"wrote {r['output']['dir']} (load with {r['output']['load_with']})")
    if args.report:
        lines.append(f"wrote {args.report}")
    print("\n".join(lines), file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- eval

def run_eval(args) -> int:
    from .datasets.text import describe_split, text_tokens
    from .eval import evaluate
    from .prune.api import load_model, resolve_model_dir
    from .prune.checks import check_sequence_length
    from .prune.export import check_output_file, write_json_atomic

    t0 = time.perf_counter()
    if args.seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2, got {args.seq_len}")
    if args.tokens < args.seq_len:
        raise ValueError(f"--tokens {args.tokens} is shorter than one sequence (--seq-len {args.seq_len})")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    _check_device(args.device)
    if args.report is not None:
        check_output_file(args.report)
    if args.text not in ("wiki", "austen") and not os.path.isfile(args.text):
        raise ValueError(f"--text {args.text!r} is neither wiki, austen nor an existing file")
    resolve_model_dir(args.model)
    tok_dir = None if args.tokenizer is None else resolve_model_dir(args.tokenizer)
    _say(args, f"loading {args.model} ...")
    model, tok = load_model(args.model, device=args.device, dtype=_dtype(args.dtype))
    if tok_dir is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tok_dir)
    if tok is None:
        raise ValueError(f"{args.model} has no tokenizer; pass --tokenizer NAME|DIR")
    check_sequence_length(model, args.seq_len, "evaluation sequences (--seq-len)")
    ids = text_tokens(args.text, tok, args.seq_len, args.tokens, split="heldout", seed=args.seed)
    res = evaluate(model, ids, progress=_progress(args), chunk_size=args.batch_size)
    res.update(model=args.model, text=args.text, slice=describe_split(args.text, "heldout"),
               seed=args.seed, device=args.device, dtype=args.dtype,
               params=sum(p.numel() for p in model.parameters()),
               total_time_s=time.perf_counter() - t0,
               command=["sketchprune", "eval"] + list(args.argv))
    if args.report is not None:
        write_json_atomic(args.report, res)
    if not args.quiet:
        print(f"{args.model} on {args.text} ({res['tokens']} tokens, seq_len {res['seq_len']}): ppl {res['ppl']:.3f}, "
              f"top-1 {res['top1']:.4f} ({res['time_s']:.1f} s)", file=sys.stderr, flush=True)
    if args.report is None:
        import json

        print(json.dumps(res, indent=1))
    return 0


# ---------------------------------------------------------------------------------------- parsers

def _common(p) -> None:
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", default=None, help="JSON report file")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def add_subparsers(sub) -> None:
    """Register ``prune`` and ``eval`` on an ``argparse`` subparsers object."""
    from .prune.criteria import CRITERIA

    p = sub.add_parser("prune", help="prune a Hugging Face causal LM and save the smaller model")
    p.add_argument("--model", required=True, help="smollm2-135m or a model directory")
    p.add_argument("--sparsity", type=float, default=0.2,
                   help="fraction of the attention + MLP parameters to remove, in [0, 1) (default 0.2)")
    p.add_argument("--criterion", default="sigma", help=f"one of: {', '.join(sorted(CRITERIA))} (default sigma)")
    p.add_argument("--reconstruct", action="store_true", help="least-squares refit of down_proj / o_proj")
    p.add_argument("--recon", default="layer", choices=["layer", "block", "cross-block"],
                   help="layer: the closed-form refits only (default); block / cross-block: then re-fit every "
                        "Linear of each pruned block (or two consecutive blocks) by Adam toward the dense model's "
                        "hidden states (implies --reconstruct)")
    p.add_argument("--calib", default="wiki", help="wiki, austen, self or a UTF-8 text FILE (default wiki)")
    p.add_argument("--calib-tokens", type=int, default=16384, help="calibration tokens (default 16384)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per calibration batch (default auto)")
    p.add_argument("--budget", default=None, help="memory budget of the pruning device, e.g. 8GiB: one layer, its "
                   "statistics and workspaces, one batch's activations (checked against a plan before any work)")
    p.add_argument("--attn-sparsity", type=float, default=None, help="fraction of attention parameters to remove")
    p.add_argument("--head-mode", default=None, choices=["query", "group"])
    p.add_argument("--flap-bias", default=None, choices=["create", "existing", "none"],
                   help="flap only: fold removed units' means into biases (default create; none with --reconstruct)")
    p.add_argument("--self-temperature", type=float, default=1.0, help="--calib self: sampling temperature")
    p.add_argument("--self-top-k", type=int, default=50, help="--calib self: top-k sampling (0 = all)")
    p.add_argument("--out", default=None, help="output model directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--onload", action="store_true",
                   help="keep the model in host memory and move one decoder layer at a time to --device (the "
                        "device then holds one layer, its statistics and one batch's activations: what --budget "
                        "bounds)")
    p.add_argument("--no-measure", action="store_true", help="skip the dense / pruned latency and memory measurement")
    p.add_argument("--no-verify", action="store_true", help="skip reloading the saved model to check its logits")
    _common(p)
    p.set_defaults(run=run_prune)

    e = sub.add_parser("eval", help="perplexity and top-1 accuracy on held-out text")
    e.add_argument("--model", required=True, help="a model directory or smollm2-135m")
    e.add_argument("--text", default="wiki", help="wiki, austen or a UTF-8 text FILE (its evaluation slice)")
    e.add_argument("--tokens", type=int, default=32768, help="tokens to evaluate (default 32768)")
    e.add_argument("--batch-size", type=int, default=1, help="sequences per forward pass (default 1)")
    e.add_argument("--tokenizer", default=None, help="tokenizer name or directory (default: the model's)")
    _common(e)
    e.set_defaults(run=run_eval)


_PRUNE_EXTRA = ("transformers", "gguf", "accelerate", "safetensors", "tokenizers")


def run(args, argv) -> int:
    """Run a parsed ``prune`` / ``eval`` command; bad input -> message and exit status 2."""
    from .budget import BudgetError
    from .datasets.cache import FetchError

    args.argv = list(argv)[1:] if argv is not None else sys.argv[2:]
    if not _progress(args):
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # its loading / saving bars
        except ImportError:
            pass
    expected = [ValueError, OSError, BudgetError, FetchError, ImportError, FloatingPointError]
    try:                      # a failed write of the weights (disk full, file too large)
        from safetensors import SafetensorError
        expected.append(SafetensorError)
    except ImportError:
        pass
    try:
        return args.run(args)
    except tuple(expected) as e:
        if os.environ.get("SKETCHPRUNE_DEBUG"):
            raise
        hint = ""
        if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in _PRUNE_EXTRA:
            hint = " (pruning needs the extra: pip install 'sketchprune[prune]')"
        print(f"sketchprune {args.cmd}: error: {e}{hint}", file=sys.stderr, flush=True)
        return EXIT_USAGE
