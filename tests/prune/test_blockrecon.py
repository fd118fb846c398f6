"""Block and cross-block reconstruction (``recon="block" | "cross-block"``) in sequential pruning:
errors measured directly on the models, the held-out choice of the weights, the streams, sparsity
0, determinism, the report, the CLI flag and the refusals."""

import copy
import math
import json
import re

import pytest
import torch

from prune_models import LAYERS, VOCAB, logits, make_model

import sketchprune as sp
from sketchprune import BudgetError
from sketchprune.budget import parse_bytes
from sketchprune.prune import get_adapter, prune_model
from sketchprune.prune.api import PruneInputError


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is fastest, and it avoids oversubscribing a shared CI machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def token_batches(n=8, b=2, t=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (b, t), generator=g) for _ in range(n)]


def _prune(recon, data=None, seed=0, **kw):
    model = make_model("llama", dtype=torch.float64)
    kw = {"sparsity": 0.3, "criterion": "sigma", "reconstruct": True, "progress": False, **kw}
    rep = prune_model(model, token_batches() if data is None else data, recon=recon, seed=seed, **kw)
    return model, rep


def _hidden_error(model, dense, batches, j):
    """E||h_j(pruned) - h_j(dense)||^2 / E||h_j(dense)||^2 of the hidden state after layer j."""
    num = den = 0.0
    with torch.no_grad():
        for x in batches:
            a = model(input_ids=x, output_hidden_states=True).hidden_states[j + 1]
            d = dense(input_ids=x, output_hidden_states=True).hidden_states[j + 1]
            num += float((a - d).square().sum())
            den += float(d.square().sum())
    return num / den


def test_block_recon_lowers_the_block_output_error_measured_on_the_models():
    """At layer 0 both runs see the dense inputs: the block refit starts from the recon="layer"
    model (its reported 'before' is that model's error) and lowers the in-sample error of the
    block's output, which is measured here directly against the dense model."""
    dense = make_model("llama", dtype=torch.float64)
    data = token_batches()
    lay, rl = _prune("layer", data, layers=[0])
    blk, rb = _prune("block", data, layers=[0])
    info = rb["layers"][0]["block_recon"]
    fit = data[: rb["calibration_batches"]]
    held = data[rb["calibration_batches"]:]
    assert info["mode"] == "block" and info["layers"] == [0]
    assert info["fit_error_before"] == pytest.approx(_hidden_error(lay, dense, fit, 0), rel=1e-9)
    assert info["fit_error_after"] == pytest.approx(_hidden_error(blk, dense, fit, 0), rel=1e-9)
    assert info["heldout_error_after"] == pytest.approx(_hidden_error(blk, dense, held, 0), rel=1e-9)
    assert info["fit_error_after"] < 0.95 * info["fit_error_before"]
    assert "block_recon" not in rl["layers"][0] and rl["recon"] == "layer" and rb["recon"] == "block"
    # every Linear of the block moved, the norms did not
    a, b = get_adapter(lay).layers(lay)[0], get_adapter(blk).layers(blk)[0]
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if "norm" in k:
            assert torch.equal(sa[k], sb[k]), k
        else:
            assert not torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("recon", ["block", "cross-block"])
def test_streams_follow_the_refit_weights(recon):
    """The pruned stream is propagated with the re-fit weights: the stream error reported after the
    last pruned layer (and its pair's in-sample error) equal the final model's errors."""
    dense = make_model("llama", dtype=torch.float64)
    data = token_batches()
    model, rep = _prune(recon, data, layers=[0, 1, 2])
    last = rep["layers"][-1]
    assert last["stream_rel_error"] == pytest.approx(_hidden_error(model, dense, data, 2) ** 0.5, rel=1e-9)
    fit = data[: rep["calibration_batches"]]
    assert last["block_recon"]["fit_error_after"] == pytest.approx(_hidden_error(model, dense, fit, 2), rel=1e-9)


def test_heldout_error_never_worse_and_the_best_epoch_is_kept():
    model, rep = _prune("block")
    n = 0
    for lay in rep["layers"]:
        info = lay["block_recon"]
        curve = info["heldout_curve"]
        assert len(curve) == info["epochs_run"] + 1 and curve[0] == info["heldout_error_before"]
        assert info["heldout_error_after"] == curve[info["best_epoch"]] == min(curve)
        assert info["heldout_error_after"] <= info["heldout_error_before"]
        n += info["best_epoch"] > 0
    assert n > 0


def test_no_improving_epoch_keeps_the_starting_weights():
    """A step size far too large makes every epoch worse held out: each block keeps its closed-form
    weights, so the model is exactly the recon="layer" one."""
    ref, _ = _prune("layer")
    model, rep = _prune("block", recon_lr=10.0, recon_epochs=2, recon_patience=1)
    for lay in rep["layers"]:
        info = lay["block_recon"]
        assert info["best_epoch"] == 0 and info["epochs_run"] == 1       # patience 1
        assert info["heldout_curve"][1] > info["heldout_curve"][0] or info["diverged"]
        assert info["heldout_error_after"] == info["heldout_error_before"]
    sd, sr = model.state_dict(), ref.state_dict()
    assert all(torch.equal(sd[k], sr[k]) for k in sr)


@pytest.mark.parametrize("recon", ["block", "cross-block"])
def test_sparsity_zero_leaves_the_model_exactly(recon):
    model, ref = make_model("llama", dtype=torch.float32), make_model("llama", dtype=torch.float32)
    rep = prune_model(model, token_batches(), sparsity=0.0, attn_sparsity=0.0, criterion="sigma", recon=recon,
                      progress=False)
    assert rep["reconstruct"] and not any("block_recon" in l for l in rep["layers"])
    sd, sr = model.state_dict(), ref.state_dict()
    assert all(torch.equal(sd[k], sr[k]) for k in sr)
    x = token_batches(1, seed=9)[0]
    assert torch.equal(logits(model, x), logits(ref, x))


@pytest.mark.parametrize("recon", ["block", "cross-block"])
def test_same_seed_same_model(recon):
    runs = [_prune(recon, seed=s) for s in (0, 0, 1)]
    (m0, r0), (m1, r1), (m2, r2) = runs
    assert all(torch.equal(a, b) for a, b in zip(m0.state_dict().values(), m1.state_dict().values()))
    strip = [{k: v for k, v in l["block_recon"].items() if k != "seconds"} for l in r0["layers"]]
    assert strip == [{k: v for k, v in l["block_recon"].items() if k != "seconds"} for l in r1["layers"]]
    # another seed shuffles the minibatches differently
    assert not all(torch.equal(a, b) for a, b in zip(m0.state_dict().values(), m2.state_dict().values()))


def test_cross_block_pairs_consecutive_pruned_layers():
    """Layers [0, 2, 3]: 0 alone, 2 alone (1 is not pruned and stays untouched), then (2, 3) jointly."""
    ref = make_model("llama", dtype=torch.float64)
    model, rep = _prune("cross-block", layers=[0, 2, 3])
    got = [(l["layer"], l["block_recon"]["mode"], l["block_recon"]["layers"]) for l in rep["layers"]]
    assert got == [(0, "block", [0]), (2, "block", [2]), (3, "cross-block", [2, 3])]
    ad = get_adapter(model)
    s1, r1 = ad.layers(model)[1].state_dict(), ad.layers(ref)[1].state_dict()
    assert all(torch.equal(s1[k], r1[k]) for k in r1)
    for lay in rep["layers"]:
        info = lay["block_recon"]
        assert info["heldout_error_after"] <= info["heldout_error_before"]
        assert info["trainable_params"] > 0 and info["seconds"] >= 0 and info["lr"] > 0
    full, rf = _prune("cross-block")
    assert [l["block_recon"]["layers"] for l in rf["layers"]] == [[0]] + [[j - 1, j] for j in range(1, LAYERS)]
    assert torch.isfinite(logits(full, token_batches(1)[0])).all()


def test_bad_requests_are_refused():
    model = make_model("llama", dtype=torch.float32)
    data = token_batches()
    with pytest.raises(ValueError, match="recon must be one of layer, block, cross-block"):
        prune_model(model, data, criterion="sigma", recon="blocks", progress=False)
    with pytest.raises(ValueError, match="sequential"):
        prune_model(model, data, criterion="sigma", recon="block", sequential=False, progress=False)
    with pytest.raises(ValueError, match="sequential"):
        prune_model(model, data, criterion="sigma", recon="cross-block", allocation="global", progress=False)
    with pytest.raises(ValueError, match="epochs"):
        prune_model(model, data, criterion="sigma", recon="block", recon_epochs=0, progress=False)
    with pytest.raises(ValueError, match="lr"):
        prune_model(model, data, criterion="sigma", recon="block", recon_lr=-1.0, progress=False)


def test_api_refuses_one_shot_and_bad_values_before_any_work():
    model = make_model("llama", dtype=torch.float32)
    ids = torch.cat(token_batches(4))
    for kw, match in [({"recon": "x"}, "recon must be one of"),
                      ({"recon": "block", "sequential": False}, "not one-shot"),
                      ({"recon": "block", "reconstruct": False}, "needs reconstruct=True"),
                      ({"recon": "block", "recon_epochs": 0}, "epochs")]:
        with pytest.raises(PruneInputError, match=match):
            sp.prune(model, ids, sparsity=0.3, measure=False, progress=False, **kw)
    pruned, rep = sp.prune(model, ids, sparsity=0.3, recon="block", measure=False, progress=False, batch_size=2)
    assert rep["recon"] == "block" and rep["pipeline"]["recon"] == "block"
    assert all(l["block_recon"]["heldout_error_after"] <= l["block_recon"]["heldout_error_before"]
               for l in rep["layers"])
    json.dumps(rep)


def _needs(err: BudgetError) -> int:
    return parse_bytes(re.search(r"needs at least (\S+ ?\S*B) ", str(err)).group(1).replace(" ", ""))


def test_budget_too_small_names_the_block_training():
    data = token_batches()
    needs = {}
    for recon in ("layer", "block", "cross-block"):
        with pytest.raises(BudgetError) as e:
            prune_model(make_model("llama", dtype=torch.float32), data, criterion="sigma", reconstruct=True,
                        recon=recon, budget="1KiB", progress=False)
        needs[recon] = _needs(e.value)
        if recon != "layer":
            assert "block training" in str(e.value)
    assert needs["layer"] < needs["block"] < needs["cross-block"]
    between = (needs["layer"] + needs["block"]) // 2
    model, ref = make_model("llama", dtype=torch.float32), make_model("llama", dtype=torch.float32)
    with pytest.raises(BudgetError, match="block training"):
        prune_model(model, data, criterion="sigma", recon="block", budget=between, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    prune_model(model, data, criterion="sigma", reconstruct=True, budget=between, progress=False)


def test_cli_recon_flag(tmp_path, capsys):
    from _tiny_lm import save_tiny_lm, write_text

    from sketchprune.cli import main

    model_dir = save_tiny_lm(tmp_path / "tiny")
    text = write_text(tmp_path / "corpus.txt", n_chars=4000)
    args = ["prune", "--model", str(model_dir), "--sparsity", "0.3", "--calib", str(text), "--calib-tokens", "256",
            "--seq-len", "32", "--batch-size", "2", "--quiet", "--no-measure"]
    report = tmp_path / "r.json"
    assert main(args + ["--recon", "cross-block", "--report", str(report)]) == 0     # implies --reconstruct
    rep = json.loads(report.read_text())
    assert rep["recon"] == "cross-block" and rep["reconstruct"]
    assert [l["block_recon"]["mode"] for l in rep["layers"]] == ["block"] + ["cross-block"] * (len(rep["layers"]) - 1)
    with pytest.raises(SystemExit) as e:
        main(args + ["--recon", "blocks", "--report", str(tmp_path / "x.json")])
    assert e.value.code == 2 and "invalid choice: 'blocks'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_blocks_train_on_a_float32_copy(dtype):
    """A bf16 / fp16 model: the blocks are trained in float32 and cast back; the model keeps its
    dtype, the held-out error (measured in the model's precision) is never worse than before, at
    least one block improves, and the next layers receive half-precision streams."""
    model = make_model("llama", dtype=dtype)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    rep = prune_model(model, token_batches(), sparsity=0.3, criterion="sigma", reconstruct=True, recon="block",
                      progress=False)
    assert {k: v.dtype for k, v in model.state_dict().items()} == dtypes
    infos = [lay["block_recon"] for lay in rep["layers"]]
    assert all(i["train_dtype"].startswith("float32") for i in infos)
    assert all(i["heldout_error_after"] <= i["heldout_error_before"] for i in infos)
    assert any(i["heldout_error_after"] < i["heldout_error_before"] for i in infos)
    assert all(math.isfinite(i["heldout_curve"][0]) and abs(i["heldout_curve"][0] - i["heldout_error_before"])
               <= 0.05 * i["heldout_error_before"] + 1e-6 for i in infos)     # the upcast start ~ the half start
    assert torch.isfinite(logits(model, token_batches(1)[0]).float()).all()


def test_half_precision_failure_leaves_the_model_in_its_dtype(monkeypatch):
    """An error in the middle of the float32 training still casts the block back."""
    from sketchprune.prune import blockrecon

    model = make_model("llama", dtype=torch.bfloat16)

    def boom(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(blockrecon.BlockRecon, "_step", boom)
    with pytest.raises(RuntimeError, match="boom"):
        prune_model(model, token_batches(), sparsity=0.3, criterion="sigma", recon="block", progress=False)
    assert all(v.dtype == torch.bfloat16 for v in model.state_dict().values() if v.is_floating_point())
