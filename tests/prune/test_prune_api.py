"""``sketchprune.prune(model, calib, ...)``: the input model is untouched unless inplace, the report
is consistent with the model, the plan reproduces the pruned model, bad arguments are
named before any work, and the measurements mean what they say."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _tiny_lm import tiny_lm  # noqa: E402

import sketchprune as sp  # noqa: E402
from prune_models import make_model  # noqa: E402
from sketchprune.prune import NonFiniteActivations, slice_model  # noqa: E402
from sketchprune.prune.api import PruneInputError  # noqa: E402
from sketchprune.prune.measure import measure_forward, weights_bytes  # noqa: E402
from sketchprune.prune.slicing import QueryHeads  # noqa: E402


@pytest.fixture(scope="module")
def dense():
    m, _ = tiny_lm(seed=1)
    return m


@pytest.fixture(scope="module")
def calib():
    return torch.randint(0, 257, (8, 24), generator=torch.Generator().manual_seed(0))


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_copy_by_default_inplace_on_request(dense, calib):
    before = _state(dense)
    pruned, rep = sp.prune(dense, calib, sparsity=0.25, criterion="wanda-sp", reconstruct=False, progress=False,
                           measure=False)
    assert pruned is not dense
    after = dense.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sum(p.numel() for p in pruned.parameters()) == rep["params"]["after"] < rep["params"]["before"]
    work = copy.deepcopy(dense)
    same, rep2 = sp.prune(work, calib, sparsity=0.25, criterion="wanda-sp", reconstruct=False, progress=False,
                          measure=False, inplace=True)
    assert same is work and rep2["plan"] == rep["plan"]


def test_report_layers_and_no_reconstruction_errors(dense, calib):
    _, rep = sp.prune(dense, calib, sparsity=0.3, criterion="sigma", reconstruct=False, progress=False, measure=False)
    assert rep["reconstruct"] is False and rep["sparsity"]["requested"] == 0.3
    assert len(rep["layers"]) == 4
    for layer in rep["layers"]:
        assert layer["recon_rel_error"] is None and layer["heldout_rel_error"] is None
        assert 0 < layer["kept_channels"] < layer["total_channels"] == 96
        assert layer["params_after"] < layer["params_before"]
    s = sum(l["params_before"] - l["params_after"] for l in rep["layers"]) / sum(l["params_before"] for l in rep["layers"])
    assert rep["sparsity"]["achieved"] == pytest.approx(s)
    assert rep["calibration"]["tokens"] == calib.numel()


def test_plan_reproduces_the_pruned_model(dense, calib):
    pruned, rep = sp.prune(dense, calib, sparsity=0.3, criterion="flap", reconstruct=False, progress=False,
                           measure=False, flap_bias="none")
    rebuilt = copy.deepcopy(dense)
    ffn = {p["layer"]: torch.tensor(p["ffn_channels"]) for p in rep["plan"]}
    heads = {p["layer"]: QueryHeads(torch.tensor(p["q_heads"])) for p in rep["plan"]}
    slice_model(rebuilt, ffn=ffn, heads=heads)
    x = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(rebuilt(input_ids=x).logits, pruned(input_ids=x).logits)


@pytest.mark.parametrize("options", [dict(recovery=True), dict(recon="block", recon_epochs=1), dict(layers=[0])],
                         ids=["recovery", "block", "some-layers"])
def test_plan_when_weights_are_refit(dense, calib, options):
    """Refits that change the kept units' first-half rows (recovery, block reconstruction) must not
    lose the plan: the kept indices are the ones the pruner chose (the same as without the refits),
    and layers left alone keep everything."""
    kw = dict(sparsity=0.3, criterion="sigma", progress=False, measure=False, seed=3)
    _, rep = sp.prune(dense, calib, reconstruct=True, **kw, **options)
    _, plain = sp.prune(dense, calib, reconstruct=True, **kw, **{k: v for k, v in options.items() if k == "layers"})
    n_layers = len(dense.model.layers)
    assert [p["layer"] for p in rep["plan"]] == list(range(n_layers))
    for p, e in zip(rep["plan"], rep["layers"]):
        assert len(p["ffn_channels"]) == e["kept_channels"] and len(p["q_heads"]) == e["kept_heads"]
        assert p["ffn_channels"] == sorted(set(p["ffn_channels"]))
    if "layers" in options:
        full = dense.model.layers[1].mlp.up_proj.out_features
        assert rep["plan"][1]["ffn_channels"] == list(range(full)) and rep["layers"][1]["kept_channels"] == full
        assert len(rep["plan"][0]["ffn_channels"]) < dense.model.layers[0].mlp.up_proj.out_features
    elif "recovery" not in options:  # block reconstruction runs after layer 0's choice: same units there
        assert rep["plan"][0] == plain["plan"][0]


def test_self_calibration(dense):
    _, rep = sp.prune(dense, "self", sparsity=0.2, criterion="wanda-sp", reconstruct=False, progress=False,
                      measure=False, seq_len=16, calib_tokens=64)
    assert rep["calibration"]["source"] == "self" and rep["calibration"]["tokens"] == 64


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": -0.01}, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": "0.2"}, "sparsity must be a number"),
    ({"criterion": "nope"}, "unknown criterion"),
    ({"budget": "lots"}, "budget"),
    ({"calib": None}, "needs calibration data"),
    ({"calib": torch.randn(4, 8)}, "integer"),
    ({"calib": torch.randint(0, 257, (1, 8))}, "at least 2"),
    ({"calib": "self", "seq_len": 16, "calib_tokens": 8}, "shorter than the sequence length"),
    ({"criterion": ["sigma"]}, "criterion must be a string"),
    ({"foo": 1}, "unknown option 'foo'"),
    ({"seed": "a"}, "seed must be an integer"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer"),
    ({"device": "cuda:0" if not torch.cuda.is_available() else "nodevice"}, "device"),
    ({"head_mode": "kv"}, "head_mode must be one of"),
    ({"allocation": "x"}, "allocation must be one of"),
    ({"attn_sparsity": 1.5}, r"attn_sparsity must be a number in \[0, 1\)"),
    ({"heldout_fraction": 0.0}, r"heldout_fraction must be a number in \(0, 1\)"),
    ({"heldout_fraction": 1.5, "sequential": False}, "heldout_fraction"),
    ({"layers": 0}, "layers must be a list"),
    ({"layers": [7]}, r"layers \[7\] out of range"),
    ({"layers": []}, "layers is empty"),
    ({"stat_dtype": torch.float16}, "stat_dtype"),
    ({"alphas": [-1.0]}, "alphas must be"),
    ({"recovery": "yes"}, "recovery must be True or False"),
    ({"calib": torch.randint(257, 300, (8, 24))}, "vocabulary has 257"),
])
def test_bad_arguments(dense, calib, kwargs, match):
    kw = {"calib": calib, "sparsity": 0.2, "criterion": "sigma", "progress": False, "measure": False}
    kw.update(kwargs)
    before = _state(dense)
    with pytest.raises(PruneInputError, match=match):
        sp.prune(dense, kw.pop("calib"), **kw)
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())


def test_non_finite_weights_named_before_any_work(dense, calib):
    bad = copy.deepcopy(dense)
    with torch.no_grad():
        bad.model.layers[1].mlp.down_proj.weight[0, 3] = float("nan")
    with pytest.raises(PruneInputError, match="non-finite .* model.layers.1.mlp.down_proj.weight"):
        sp.prune(bad, calib, sparsity=0.2, criterion="magnitude-l2", reconstruct=False, progress=False, measure=False)
    # before self-generated calibration runs the broken model (it failed inside sampling)
    with pytest.raises(PruneInputError, match="non-finite"):
        sp.prune(bad, "self", sparsity=0.2, criterion="sigma", progress=False, measure=False, seq_len=16,
                 calib_tokens=64)


def test_high_sparsity_may_remove_a_whole_ffn(dense, calib):
    """At 95% the head rounding leaves the FFNs to lose everything (a valid, attention-only block:
    the plan and the model agree, the model runs) and still falls short: said in a warning."""
    with pytest.warns(UserWarning, match="achieved sparsity 0.7.* differs from the requested 0.950"):
        pruned, rep = sp.prune(dense, calib, sparsity=0.95, criterion="sigma", reconstruct=False, progress=False,
                               measure=False)
    for p, layer in zip(rep["plan"], pruned.model.layers):
        assert len(p["ffn_channels"]) == layer.mlp.up_proj.out_features == 0
    assert 0.7 < rep["sparsity"]["achieved"] < 0.95
    with torch.no_grad():
        assert torch.isfinite(pruned(input_ids=calib[:1]).logits).all()


def test_unsupported_architecture(calib):
    cfg = transformers.GPT2Config(vocab_size=257, n_embd=32, n_layer=1, n_head=2)
    with pytest.raises(PruneInputError, match="unsupported architecture 'gpt2'"):
        sp.prune(transformers.GPT2LMHeadModel(cfg), calib, progress=False)


def test_measure_forward_counts_weights_and_activations(dense):
    x = torch.randint(0, 257, (1, 40), generator=torch.Generator().manual_seed(2))
    m = measure_forward(dense, x, repeats=2)
    assert m["weights_bytes"] == weights_bytes(dense) >= 4 * sum(p.numel() for p in dense.parameters())
    # the logits alone (1 x 40 x 257 fp32) are allocated during the pass
    assert m["activation_peak_bytes"] >= 40 * 257 * 4
    assert m["peak_memory_bytes"] == m["weights_bytes"] + m["activation_peak_bytes"]
    assert len(m["latency_runs_s"]) == 2 and m["latency_s"] > 0
    # longer input, more activation memory; the measurement is repeatable
    m2 = measure_forward(dense, torch.cat([x, x], 1), repeats=1)
    assert m2["activation_peak_bytes"] > m["activation_peak_bytes"]
    assert measure_forward(dense, x, repeats=1)["activation_peak_bytes"] == m["activation_peak_bytes"]


def test_callable_packages_keep_their_modules():
    from sketchprune.prune import prune_model  # the subpackage still imports as before

    assert callable(sp.prune) and callable(sp.select) and callable(prune_model)
    sel = sp.select(3, "uniform", torch.randn(10, 4))
    assert len(set(sel.indices.tolist())) == 3


def test_meta_weights_refused_before_any_work(calib):
    with torch.device("meta"):
        m, _ = tiny_lm(seed=1)
    for crit in ("random", "sigma"):
        with pytest.raises(PruneInputError, match="meta device"):
            sp.prune(m, calib, sparsity=0.2, criterion=crit, progress=False, measure=False)


@pytest.mark.parametrize("kw", [
    {"criterion": "sigma"},
    {"criterion": "taylor", "reconstruct": False},
    {"criterion": "taylor", "reconstruct": False, "sequential": False},
    {"criterion": "greedy", "reconstruct": False, "sequential": False},
    {"criterion": "random", "reconstruct": True, "sequential": False},
])
def test_non_finite_activations_name_the_layer_on_every_path(dense, calib, kw):
    """Finite weights, activations overflowing in layer 1: every path (sequential streams, the
    dense gradient pass, one-shot statistics) names layer 1 -- before, the gradient pass blamed
    layer 0's scores (NaN gradients flow back), one-shot greedy spoke of damping and one-shot
    reconstruction finished without a word."""
    bad = copy.deepcopy(dense)
    with torch.no_grad():
        bad.model.layers[1].mlp.up_proj.weight.mul_(1e38)
    with pytest.raises(NonFiniteActivations, match="decoder layer 1"):
        sp.prune(bad, calib, sparsity=0.2, progress=False, measure=False, **kw)


def test_gradient_criteria_need_a_language_model_head(calib):
    """A bare backbone (no logits) is refused; before, its hidden states were taken for logits
    (an index error, or for a small hidden size a 'loss' on hidden units). A masked-LM encoder
    scores its own tokens (same-position loss), deterministically."""
    bare = make_model("bert", dtype=torch.float32, seed=0)
    ids = calib[:, :16] % 100
    with pytest.raises(ValueError, match="no vocabulary logits"):
        sp.prune(bare, ids, sparsity=0.3, criterion="taylor", reconstruct=False, progress=False, measure=False)
    mlm = make_model("bert-mlm", dtype=torch.float32, seed=0)
    _, r1 = sp.prune(mlm, ids, sparsity=0.3, criterion="taylor", reconstruct=False, progress=False, measure=False)
    _, r2 = sp.prune(mlm, ids, sparsity=0.3, criterion="taylor", reconstruct=False, progress=False, measure=False)
    assert r1["plan"] == r2["plan"]


def test_mlm_loss_is_the_same_position_cross_entropy():
    from sketchprune.prune.gradient_scores import lm_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)

    class Out:
        pass
    out = Out()
    out.logits = logits
    ref = torch.nn.functional.cross_entropy(logits[mask], ids[mask])
    torch.testing.assert_close(lm_loss(None, out, ids, mask, causal=False), ref)
    nxt = torch.nn.functional.cross_entropy(logits[:, :-1][mask[:, 1:] & mask[:, :-1]], ids[:, 1:][mask[:, 1:] & mask[:, :-1]])
    torch.testing.assert_close(lm_loss(None, out, ids, mask, causal=True), nxt)


# ------------------------------------------------------------------ inside a larger stack

def test_hooks_on_sliced_projections_move_to_the_smaller_modules(dense, calib):
    work = copy.deepcopy(dense)
    layer = work.model.layers[0]
    calls = {"down": 0, "q_pre": 0}
    h1 = layer.mlp.down_proj.register_forward_hook(lambda m, a, o: calls.__setitem__("down", calls["down"] + 1))
    layer.self_attn.q_proj.register_forward_pre_hook(lambda m, a: calls.__setitem__("q_pre", calls["q_pre"] + 1))
    pruned, _ = sp.prune(work, calib, sparsity=0.3, criterion="sigma", reconstruct=False, progress=False,
                         measure=False, inplace=True)
    down = pruned.model.layers[0].mlp.down_proj
    assert down.in_features < 96                                   # really sliced, a new module
    calls.update(down=0, q_pre=0)
    with torch.no_grad():
        pruned(calib[:1])
    assert calls == {"down": 1, "q_pre": 1}
    h1.remove()                                                    # the caller's handle still works
    with torch.no_grad():
        pruned(calib[:1])
    assert calls == {"down": 1, "q_pre": 2}


def test_a_projection_that_is_not_a_plain_linear_is_refused_before_any_work(dense, calib):
    class ObservedLinear(torch.nn.Linear):
        pass

    work = copy.deepcopy(dense)
    old = work.model.layers[2].self_attn.q_proj
    new = ObservedLinear(old.in_features, old.out_features, bias=False)
    new.weight = old.weight
    work.model.layers[2].self_attn.q_proj = new
    before = _state(work)
    with pytest.raises(PruneInputError, match=r"model\.layers\.2\.self_attn\.q_proj of decoder layer 2 is a "
                                              r".*ObservedLinear"):
        sp.prune(work, calib, sparsity=0.3, criterion="sigma", progress=False, measure=False, inplace=True)
    after = work.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was pruned
    # FFN-only pruning does not slice the attention: the wrapped q_proj is no obstacle
    pruned, _ = sp.prune(work, calib, sparsity=0.3, attn_sparsity=0.0, criterion="sigma", progress=False,
                         measure=False)
    assert type(pruned.model.layers[2].self_attn.q_proj) is ObservedLinear
    assert pruned.model.layers[2].mlp.down_proj.in_features < 96


def test_under_inference_mode_the_result_is_trainable(dense, calib):
    with torch.inference_mode():
        pruned, _ = sp.prune(dense, calib, sparsity=0.3, criterion="taylor", reconstruct=True, progress=False,
                             measure=False)
    assert not any(p.is_inference() for p in pruned.parameters())
    pruned.train()
    pruned(input_ids=calib[:2], labels=calib[:2]).loss.backward()
    assert all(p.grad is not None for p in pruned.parameters() if p.requires_grad)


def test_tokenizer_outputs_and_single_dicts_are_calibration_batches(dense, calib):
    from transformers import BatchEncoding

    kw = dict(sparsity=0.3, criterion="sigma", reconstruct=False, progress=False, measure=False, batch_size=2)
    _, ref = sp.prune(dense, calib, **kw)
    mask = torch.ones_like(calib)
    for given in ([BatchEncoding({"input_ids": b, "attention_mask": m}) for b, m in zip(calib.split(2), mask.split(2))],
                  {"input_ids": calib, "attention_mask": mask},
                  BatchEncoding({"input_ids": calib, "attention_mask": mask})):
        _, rep = sp.prune(dense, given, **kw)
        assert rep["plan"] == ref["plan"]
    with pytest.raises(PruneInputError, match="batch 1 has torch.float32 tensor"):
        sp.prune(dense, [calib[:2], calib[2:4].float()], **kw)
