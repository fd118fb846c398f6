"""``sketchprune prune`` / ``sketchprune eval`` end to end on a tiny random Llama saved to a temporary
directory, calibrated on a text file (no network): outputs, consistency with the Python API and a
direct computation, every bad input, and atomic output."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from _tiny_lm import save_tiny_lm, write_text

from sketchprune.cli import main

SEQ = 32


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("assets")
    model_dir = save_tiny_lm(d / "tiny")
    text = write_text(d / "corpus.txt", n_chars=6000)
    return model_dir, text


def _prune_args(model_dir, text, out=None, report=None, *extra):
    args = ["prune", "--model", str(model_dir), "--sparsity", "0.3", "--criterion", "sigma", "--calib", str(text),
            "--calib-tokens", str(8 * SEQ), "--seq-len", str(SEQ), "--quiet"]
    if out is not None:
        args += ["--out", str(out)]
    if report is not None:
        args += ["--report", str(report)]
    return args + list(extra)


def _leftovers(parent, name):
    """Temporary siblings that a run must not leave behind."""
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def pruned(assets, tmp_path_factory):
    model_dir, text = assets
    d = tmp_path_factory.mktemp("pruned")
    out, report = d / "out", d / "report.json"
    torch.manual_seed(0)
    assert main(_prune_args(model_dir, text, out, report, "--reconstruct")) == 0
    return out, json.loads(report.read_text())


def test_prune_writes_model_plan_and_report(pruned):
    out, rep = pruned
    for f in ("config.json", "model.safetensors", "pruning_plan.json", "report.json", "tokenizer.json"):
        assert (out / f).is_file(), f
    assert rep["params"]["after"] < rep["params"]["before"]
    s = rep["sparsity"]
    # one FFN channel of 96 or one query head of 8 per KV group is the granularity of the allocation
    assert s["requested"] == 0.3 and abs(s["achieved"] - 0.3) < 0.05
    assert rep["time_s"] > 0 and rep["peak_memory_bytes"] > 0 and rep["peak_memory_method"]
    assert len(rep["layers"]) == 4
    plan = json.loads((out / "pruning_plan.json").read_text())["layers"]
    for layer, p in zip(rep["layers"], plan):
        assert layer["kept_channels"] == len(p["ffn_channels"]) < layer["total_channels"] == 96
        assert layer["kept_heads"] == len(p["q_heads"]) <= 8
        assert p["ffn_channels"] == sorted(set(p["ffn_channels"]))  # distinct dense indices
        assert layer["recon_rel_error"] is not None and layer["heldout_rel_error"] is not None
    inf = rep["inference"]
    for k in ("dense", "pruned"):
        assert inf[k]["latency_s"] > 0 and inf[k]["peak_memory_bytes"] > inf[k]["weights_bytes"] > 0
    assert inf["pruned"]["weights_bytes"] < inf["dense"]["weights_bytes"]
    # weights bytes: the fp32 parameters plus the same buffers (rotary frequencies) in both
    buffers = inf["dense"]["weights_bytes"] - 4 * rep["params"]["before"]
    assert 0 <= buffers < 1024 and inf["pruned"]["weights_bytes"] == 4 * rep["params"]["after"] + buffers
    assert rep["calibration"]["tokens"] == 8 * SEQ and rep["calibration"]["source"].endswith("corpus.txt")
    assert rep["output"]["verify"]["max_abs_logit_diff"] == 0.0
    assert json.loads((out / "report.json").read_text())["params"] == rep["params"]


def test_saved_model_loads_and_matches_the_api(assets, pruned):
    """The saved directory reloads (stock transformers for uniform widths, load_pruned always) and
    gives the logits of the same pruning done in memory through sketchprune.prune."""
    import transformers

    import sketchprune as sp
    from sketchprune.datasets.text import text_tokens
    from sketchprune.prune import load_pruned
    from sketchprune.prune.api import load_model

    model_dir, text = assets
    out, rep = pruned
    model, tok = load_model(model_dir)
    calib = text_tokens(str(text), tok, SEQ, 8 * SEQ, split="calib", seed=0)
    mem, rep2 = sp.prune(model, calib, sparsity=0.3, criterion="sigma", reconstruct=True, progress=False,
                         measure=False)
    assert rep2["plan"] == rep["plan"]
    x = torch.randint(0, 257, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = mem(input_ids=x).logits
        got = load_pruned(out)(input_ids=x).logits
    assert torch.equal(got, ref)
    if rep["output"]["load_with"].startswith("transformers"):
        with torch.no_grad():
            assert torch.equal(transformers.AutoModelForCausalLM.from_pretrained(out)(input_ids=x).logits, ref)
    else:  # 6 of 8 query heads do not divide hidden 64: the stock config cannot describe it
        with pytest.raises(Exception):
            transformers.AutoModelForCausalLM.from_pretrained(out)


def test_flap_with_created_biases_saves_and_reloads(assets, tmp_path):
    """FLAP's bias compensation gives the tiny Llama down / o biases it does not have: the saved
    directory records them and load_pruned reproduces the in-memory model (checked by the CLI
    before the directory is moved into place, and here again)."""
    from sketchprune.prune import load_pruned

    model_dir, text = assets
    out, report = tmp_path / "out", tmp_path / "report.json"
    args = _prune_args(model_dir, text, out, report)
    args[args.index("--criterion") + 1] = "flap"
    assert main(args) == 0
    rep = json.loads(report.read_text())
    assert rep["output"]["load_with"] == "sketchprune.load_pruned"
    assert rep["output"]["verify"]["max_abs_logit_diff"] <= 1e-5
    cfg = json.loads((out / "config.json").read_text())
    assert all(l["added_biases"] == ["down", "o"] for l in cfg["sketchprune_layers"])
    model = load_pruned(out)
    assert all(l.mlp.down_proj.bias is not None and l.self_attn.o_proj.bias is not None for l in model.model.layers)


def test_eval_equals_direct_computation(assets, pruned, tmp_path):
    from sketchprune.datasets.text import text_tokens
    from sketchprune.prune.api import load_model

    _, text = assets
    out, _ = pruned
    report = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--text", str(text), "--seq-len", "24", "--tokens", "240",
                 "--report", str(report), "--quiet"]) == 0
    res = json.loads(report.read_text())
    model, tok = load_model(out, dtype=torch.float64)
    ids = text_tokens(str(text), tok, 24, 240, split="heldout", seed=0)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].reshape(-1, 257)
    tgt = ids[:, 1:].reshape(-1)
    nll = F.cross_entropy(logits, tgt, reduction="mean").item()
    top1 = (logits.argmax(-1) == tgt).double().mean().item()
    assert res["ppl"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert res["top1"] == pytest.approx(top1, abs=1.5 / tgt.numel())  # fp32 vs fp64 may flip a near tie
    assert res["tokens"] == 240 and res["predicted_tokens"] == 10 * 23 and res["seq_len"] == 24
    # never the calibration slice: the evaluated windows come from the file's last quarter
    lines = text.read_text()
    assert tok.decode(ids[0]) in lines[3 * len(lines) // 4 - 100:]


def _bad(argv, capsys, match):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error:" in err and match in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", ["sparsity-high", "sparsity-negative", "criterion", "missing-model", "arch",
                                  "calib-short", "file-short", "calib-missing", "budget", "out-unwritable",
                                  "out-exists", "report-unwritable"])
def test_bad_input_is_a_clear_error_and_writes_nothing(case, assets, tmp_path, capsys):
    model_dir, text = assets
    out = tmp_path / "out"
    args = _prune_args(model_dir, text, out)
    match = {
        "sparsity-high": "sparsity must be in [0, 1)", "sparsity-negative": "sparsity must be in [0, 1)",
        "criterion": "unknown criterion", "missing-model": "neither a known name", "arch": "unsupported architecture",
        "calib-short": "shorter than one sequence", "file-short": "shorter than the sequence length",
        "calib-missing": "neither wiki, austen, self nor an existing file", "budget": "budget",
        "out-unwritable": "not a directory", "out-exists": "already exists", "report-unwritable": "does not exist",
    }[case]
    if case == "sparsity-high":
        args[args.index("--sparsity") + 1] = "1.0"
    elif case == "sparsity-negative":
        args[args.index("--sparsity") + 1] = "-0.1"
    elif case == "criterion":
        args[args.index("--criterion") + 1] = "nonsense"
    elif case == "missing-model":
        args[args.index("--model") + 1] = str(tmp_path / "no-such-model")
    elif case == "arch":
        gpt2 = tmp_path / "gpt2"
        gpt2.mkdir()
        (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
        args[args.index("--model") + 1] = str(gpt2)
    elif case == "calib-short":
        args[args.index("--calib-tokens") + 1] = str(SEQ - 1)
    elif case == "file-short":
        short = tmp_path / "short.txt"
        short.write_text("a few words\nonly here\n")
        args[args.index("--calib") + 1] = str(short)
        args[args.index("--calib-tokens") + 1] = str(SEQ)
    elif case == "calib-missing":
        args[args.index("--calib") + 1] = str(tmp_path / "missing.txt")
    elif case == "budget":
        args += ["--budget", "1KiB"]
    elif case == "out-unwritable":
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        out = blocker / "out"
        args[args.index("--out") + 1] = str(out)
    elif case == "out-exists":
        out.mkdir()
        (out / "keep.txt").write_text("precious")
    elif case == "report-unwritable":
        args += ["--report", str(tmp_path / "no-dir" / "r.json")]
    _bad(args, capsys, match)
    if case == "out-exists":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()
    assert not _leftovers(tmp_path, "out")


def test_unwritable_directory_for_non_root(assets, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root can write into a read-only directory")
    model_dir, text = assets
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _bad(_prune_args(model_dir, text, ro / "out"), capsys, "cannot write")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("where", ["verify", "plan-file"])
def test_a_failure_while_saving_leaves_nothing(assets, tmp_path, monkeypatch, where):
    import sketchprune.prune.export as export

    model_dir, text = assets
    if where == "verify":
        def boom(*a, **k):
            raise RuntimeError("injected failure after the weights were written")
        monkeypatch.setattr(export, "_verify", boom)
    else:
        real = export._json_text

        def boom(obj):
            if isinstance(obj, dict) and "layers" in obj and "criterion" in obj and "params" not in obj:
                raise RuntimeError("injected failure while writing pruning_plan.json")
            return real(obj)
        monkeypatch.setattr(export, "_json_text", boom)
    out, report = tmp_path / "out", tmp_path / "r.json"
    with pytest.raises(RuntimeError, match="injected"):
        main(_prune_args(model_dir, text, out, report, "--no-measure"))
    assert not out.exists() and not report.exists()
    assert not _leftovers(tmp_path, "out")


@pytest.mark.parametrize("interrupt", [False, True])
def test_overwrite_replaces_an_existing_output(assets, tmp_path, monkeypatch, request, interrupt):
    """The old directory is moved aside and deleted once the new one is in place; with
    ``interrupt`` a Ctrl-C lands during that deletion and is raised once it is done (status 130),
    leaving nothing behind."""
    if interrupt:
        import shutil
        import signal

        import sketchprune.prune.export as export

        # a process started in the background of a non-interactive shell inherits SIGINT ignored
        # (Python then installs no KeyboardInterrupt handler): put Python's own back for the test
        old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
        request.addfinalizer(lambda: signal.signal(signal.SIGINT, old_handler))
        real = shutil.rmtree

        def rmtree(path, *a, **k):
            if ".out.old-" in str(path):
                signal.raise_signal(signal.SIGINT)
            return real(path, *a, **k)
        monkeypatch.setattr(export.shutil, "rmtree", rmtree)
    model_dir, text = assets
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(_prune_args(model_dir, text, out, None, "--overwrite", "--criterion", "magnitude-l2",
                            "--no-measure")) == (130 if interrupt else 0)
    assert not (out / "old.txt").exists() and (out / "pruning_plan.json").is_file()
    assert not _leftovers(tmp_path, "out")


def test_eval_bad_inputs(assets, tmp_path, capsys):
    model_dir, text = assets
    base = ["eval", "--model", str(model_dir), "--text", str(text), "--seq-len", "32", "--quiet"]
    _bad(base + ["--tokens", "16"], capsys, "shorter than one sequence")
    _bad(base + ["--tokens", "100000"], capsys, "ask for at most")
    _bad(["eval", "--model", str(tmp_path / "nope"), "--text", str(text)], capsys, "neither a known name")
    _bad(base[:3] + ["--text", str(tmp_path / "none.txt")], capsys, "neither wiki, austen nor an existing file")


def test_output_directory_has_ordinary_permissions(pruned):
    out, _ = pruned
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


def test_onload_flag_prunes_the_same(assets, pruned, tmp_path):
    """--onload (here with --device cpu, where the moves are no-ops) goes through the on-loading
    path and gives the same model and report entries as the plain run."""
    model_dir, text = assets
    out, report = tmp_path / "out", tmp_path / "report.json"
    torch.manual_seed(0)
    assert main(_prune_args(model_dir, text, out, report, "--reconstruct", "--onload")) == 0
    rep = json.loads(report.read_text())
    assert rep["onload"] is True and rep["device"] == "cpu"
    assert [l["kept_channels"] for l in rep["layers"]] == [l["kept_channels"] for l in pruned[1]["layers"]]
    from safetensors.torch import load_file

    a, b = load_file(str(out / "model.safetensors")), load_file(str(pruned[0] / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_transformers_names_the_extra(monkeypatch, capsys, tmp_path):
    """Without transformers, prune / eval / load_pruned say which extra to install."""
    import sys as _sys

    from sketchprune.cli import main as _main

    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    monkeypatch.setitem(_sys.modules, "transformers", None)   # `import transformers` now fails
    rc = _main(["eval", "--model", str(tmp_path), "--text", "wiki", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'sketchprune[prune]'" in err and "transformers" in err, err
    import sketchprune
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'sketchprune\[prune\]'"):
        sketchprune.load_pruned(tmp_path)


@pytest.mark.parametrize("kind", ["bert", "bert-mlm"])
def test_encoder_directories_keep_their_class(kind, assets, tmp_path):
    """A BERT directory is loaded and saved as the class its config names (before, every directory
    went through AutoModelForCausalLM: a BertModel came back a BertLMHeadModel with a new random
    head and without its pooler, and the run exited 0)."""
    import transformers
    from prune_models import make_model

    from sketchprune.prune.export import load_saved

    _, text = assets
    src = tmp_path / "enc"
    model = make_model(kind, dtype=torch.float32, seed=0, vocab_size=257, max_position_embeddings=64)
    model.save_pretrained(src)
    from _tiny_lm import byte_tokenizer
    byte_tokenizer().save_pretrained(src)
    out = tmp_path / "out"
    assert main(["prune", "--model", str(src), "--sparsity", "0.3", "--criterion", "sigma", "--calib", str(text),
                 "--calib-tokens", str(8 * SEQ), "--seq-len", str(SEQ), "--quiet", "--no-measure",
                 "--out", str(out)]) == 0
    want = type(model).__name__
    assert json.loads((out / "config.json").read_text())["architectures"] == [want]
    loaded = load_saved(out)
    assert isinstance(loaded, getattr(transformers, want))
    # same parameters; those outside the pruned layers (embeddings, pooler, MLM head) unchanged
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if ".layer." not in k)


def test_failed_weight_write_is_a_one_line_error(assets, tmp_path, monkeypatch, capsys):
    """An error of the weights' writer (safetensors: file too large, disk full) is reported in one
    line with nothing left behind, not as a traceback."""
    import safetensors
    import transformers

    model_dir, text = assets

    def failing(self, *a, **k):
        raise safetensors.SafetensorError("Error while serializing: File too large (os error 27)")
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", failing)
    out = tmp_path / "out"
    assert main(_prune_args(model_dir, text, out, None, "--no-measure")) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "File too large" in err and "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("extra, match", [
    (["--attn-sparsity", "1.5"], "--attn-sparsity must be in [0, 1)"),
    (["--attn-sparsity", "nan"], "--attn-sparsity must be in [0, 1)"),
    (["--flap-bias", "create"], "--flap-bias applies to --criterion flap only"),
    (["--criterion", "flap", "--reconstruct", "--flap-bias", "create"], "use --flap-bias none"),
    (["--seq-len", "0", "--calib-tokens", "0"], "--seq-len must be a positive number of tokens"),
])
def test_option_errors_come_before_the_model_loads(assets, tmp_path, monkeypatch, capsys, extra, match):
    import sketchprune.prune.api as api

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")
    monkeypatch.setattr(api, "load_model", no_load)
    model_dir, text = assets
    _bad(_prune_args(model_dir, text, tmp_path / "out") + extra, capsys, match)


@pytest.mark.parametrize("out", [".", "", ".."])
def test_current_directory_is_refused_as_output(assets, tmp_path, monkeypatch, capsys, out):
    import sketchprune.prune.api as api

    monkeypatch.setattr(api, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    monkeypatch.chdir(tmp_path)
    model_dir, text = assets
    _bad(_prune_args(model_dir, text, out, None, "--overwrite"), capsys, "current directory or one above it")


def test_report_files_have_ordinary_permissions(pruned):
    """--report is written through a private temporary file: it must end up as an ordinary file."""
    out, _ = pruned
    umask = os.umask(0)
    os.umask(umask)
    assert (out.parent / "report.json").stat().st_mode & 0o777 == 0o666 & ~umask   # the fixture's --report


def test_ctrl_c_is_one_line_and_status_130(assets, tmp_path, monkeypatch, capsys):
    import sketchprune.prune.api as api

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(api, "load_model", interrupted)
    model_dir, text = assets
    assert main(_prune_args(model_dir, text, tmp_path / "out")) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
