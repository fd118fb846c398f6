import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import sketchprune as sp
from _helpers import assert_close_to_oracle
from sketchprune.budget import BudgetError
from sketchprune.ref.ops import sparse_sign_sketch_ref
from sketchprune.select.gradients import linear_probe_sketch, model_gradient_sketch


def _formed(model, layers, x, y, loss_fn, dtype):
    """Per-sample gradients of the layers' (weight, bias), formed with torch.func on a copy of the
    model in ``dtype`` (eval mode), flattened in the sketch's layout (layer by layer, weight then bias)."""
    ref = copy.deepcopy(model).to(dtype).eval()
    prefix = {id(mod): name for name, mod in model.named_modules()}
    names = [f"{prefix[id(l)]}.{pn}".lstrip(".") for l in layers for pn, _ in l.named_parameters(recurse=False)]
    params = {n: p.detach() for n, p in ref.named_parameters()}
    state = {**params, **dict(ref.named_buffers())}

    def loss_one(ps, xi, yi):
        return loss_fn(functional_call(ref, {**state, **ps}, (xi[None],)), None if yi is None else yi[None]).sum()

    g = vmap(grad(loss_one), in_dims=(None, 0, None if y is None else 0))({n: params[n] for n in names},
                                                                           x.to(dtype), y)
    return torch.cat([g[n].reshape(x.shape[0], -1) for n in names], 1)


def _check(model, layers, x, y, loss_fn, m=64, k=4, seed=1, batch=None, **kw):
    """model_gradient_sketch against the float64 per-sample gradients (torch.func) sketched by the
    float64 reference of sparse_sign_sketch; torch's own float32 gradients set the tolerance."""
    bs = batch or x.shape[0]
    batches = [(x[i:i + bs], None if y is None else y[i:i + bs]) for i in range(0, x.shape[0], bs)]
    sk, rec = model_gradient_sketch(model, layers, batches, loss_fn, m=m, k=k, seed=seed, **kw)
    G64 = _formed(model, layers, x, y, loss_fn, torch.float64)
    oracle = sparse_sign_sketch_ref(G64, m, k, seed, 0, compute_dtype=torch.float64)
    torch32 = sp.sparse_sign_sketch(_formed(model, layers, x, y, loss_fn, torch.float32), m, k, seed)
    assert rec["r"] == G64.shape[1] and sk.shape == (x.shape[0], m) and sk.dtype == torch.float32
    assert_close_to_oracle(sk, oracle, torch32, G64.shape[1], what="model_gradient_sketch")
    return sk, rec


CE = nn.CrossEntropyLoss(reduction="none")


def test_linear_probe_matches_formed_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 12, generator=g)
    y = torch.randint(0, 5, (40,), generator=g)
    for init in ("zeros", "random"):
        sk, rec = linear_probe_sketch(x, y, 5, m=32, k=4, seed=3, init=init, chunk=16)
        # labels are given, so a random W is the first draw of the generator seeded with `seed`
        W = torch.zeros(5, 12) if init == "zeros" else torch.randn(5, 12, generator=torch.Generator().manual_seed(3)) / 12**0.5
        err = torch.softmax(x @ W.T, 1) - nn.functional.one_hot(y, 5).float()
        G = torch.cat([(err[:, :, None] * x[:, None, :]).reshape(40, -1), err], 1)
        assert rec["r"] == G.shape[1]
        assert torch.allclose(sk, sp.sparse_sign_sketch(G, 32, 4, 3), rtol=1e-4, atol=1e-5)


def test_model_gradients_linear_and_conv_match_torch_func():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 6), nn.ReLU(),
                          nn.Linear(6, 4))
    x = torch.randn(10, 2, 5, 5)
    y = torch.randint(0, 4, (10,))
    flags = [p.requires_grad for p in model.parameters()]
    _check(model, [model[0], model[5]], x, y, CE, batch=6)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    assert [p.requires_grad for p in model.parameters()] == flags


def test_model_gradients_sequence_linear():
    torch.manual_seed(1)
    lin = nn.Linear(5, 3)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), lin)
    x = torch.randn(7, 6, 4)  # T = 6 tokens per sample
    _check(model, [lin], x, None, lambda out, _: out.pow(2).sum((1, 2)), m=16, k=2, seed=5)


def test_inplace_relu_after_linear_and_conv():
    """The gradient is taken at each layer's output as it left the layer, although ReLU(inplace)
    overwrites that tensor right after."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 8), nn.ReLU(inplace=True), nn.Linear(8, 5))
    x = torch.randn(9, 3, 6, 6)
    y = torch.randint(0, 5, (9,))
    sk, _ = _check(model, [model[0], model[3], model[5]], x, y, CE, m=48, k=3, seed=7, batch=4)
    # the gradient with respect to the post-ReLU values is a different (wrong) answer: the check has teeth
    wrong = nn.Sequential(*[copy.deepcopy(l) for l in model])
    wrong[1], wrong[4] = nn.Identity(), nn.Identity()
    G_wrong = _formed(wrong, [wrong[0], wrong[3], wrong[5]], x, y, CE, torch.float64)
    assert not torch.allclose(sk.double(), sparse_sign_sketch_ref(G_wrong, 48, 3, 7, compute_dtype=torch.float64),
                              rtol=1e-3, atol=1e-4)


class _Residual(nn.Module):
    """conv -> out += x -> ReLU in place (both on the conv's own output) -> BN (eval) -> head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        out = self.conv(x)
        out += x
        torch.relu_(out)
        return self.head(self.bn(out).mean((2, 3)))


def test_residual_inplace_add_and_batchnorm_in_eval_mode():
    torch.manual_seed(3)
    model = _Residual()
    with torch.no_grad():  # non-trivial running statistics, which eval mode must use
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.normal_()
        model.bn.bias.normal_()
    model.train()
    x = torch.randn(8, 4, 5, 5)
    y = torch.randint(0, 3, (8,))
    stats = model.bn.running_mean.clone()
    _check(model, [model.conv, model.head], x, y, CE, m=32, k=2, seed=4, batch=3)
    assert model.training and torch.equal(model.bn.running_mean, stats)  # mode restored, statistics untouched


@pytest.mark.parametrize("conv", [
    dict(stride=2, padding=1),
    dict(dilation=2, padding=2, bias=False),
    dict(padding="same", padding_mode="reflect"),
    dict(padding=1, padding_mode="circular", groups=2),
    dict(padding=(0, 1), stride=(1, 2)),
], ids=["stride", "dilation-nobias", "same-reflect", "circular-groups", "asymmetric"])
def test_conv_geometries(conv):
    torch.manual_seed(5)
    layer = nn.Conv2d(4, 6, 3, **conv)
    model = nn.Sequential(layer, nn.Tanh(), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(7, 4, 7, 6)
    model(x)  # materialise the lazy head
    _check(model, [layer, model[3]], x, torch.randint(0, 3, (7,)), CE, m=40, k=3, seed=2)


def test_channels_last_input_and_frozen_model():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(5, 4)).to(memory_format=torch.channels_last)
    model.requires_grad_(False)
    x = torch.randn(6, 3, 5, 5).to(memory_format=torch.channels_last)
    _check(model, [model[0], model[4]], x, torch.randint(0, 4, (6,)), CE, m=32, k=2, seed=3)
    assert not any(p.requires_grad for p in model.parameters())


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 5)
        self.mid = nn.Linear(5, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.mid(torch.tanh(self.inp(x))))
        return self.out(torch.tanh(self.mid(h)))  # mid is used twice


def test_layer_used_twice_sums_its_uses():
    torch.manual_seed(7)
    model = _Shared()
    x = torch.randn(8, 3)
    _check(model, [model.mid, model.out], x, torch.randint(0, 2, (8,)), CE, m=32, k=2, seed=6)


def test_backward_stops_at_the_earliest_sketched_layer():
    class Trap(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise AssertionError("the backward reached a layer below the sketched ones")

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.below = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 3)
            self.trap = True

        def forward(self, x):
            h = self.below(x)
            return self.fc(Trap.apply(h) if self.trap else h)

    torch.manual_seed(8)
    model = Model()
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    # the inputs require grad, so a graph exists below fc: the backward must still stop at fc's output
    sk, _ = model_gradient_sketch(model, [model.fc], [(x.clone().requires_grad_(), y)], CE, m=16, k=2, seed=1)
    plain = copy.deepcopy(model)
    plain.trap = False
    ref, _ = _check(plain, [plain.fc], x, y, CE, m=16, k=2, seed=1)
    torch.testing.assert_close(sk, ref)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.unused = nn.Linear(4, 4)  # a submodule that forward never calls

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_errors_name_the_layer():
    torch.manual_seed(9)
    model = _Net()
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    with pytest.raises(ValueError, match="'unused' was not called"):
        model_gradient_sketch(model, [model.fc2, model.unused], [(x, y)], CE, m=16)
    with pytest.raises(ValueError, match="'fc2' is given twice"):
        model_gradient_sketch(model, [model.fc2, model.fc2], [(x, y)], CE, m=16)
    with pytest.raises(TypeError, match="ReLU"):
        model_gradient_sketch(model, [nn.ReLU()], [(x, y)], CE, m=16)
    with pytest.raises(ValueError, match="one loss per sample"):
        model_gradient_sketch(model, [model.fc2], [(x, y)], nn.CrossEntropyLoss(), m=16)
    with pytest.raises(ValueError, match="batch-first"):
        model_gradient_sketch(model, [model.fc2], [(x, y)], lambda out, t: CE(out, t)[:4], m=16)
    model.unused.weight = model.fc1.weight  # tied weights
    with pytest.raises(ValueError, match="weight of layer 'fc1' is shared with module 'unused'"):
        model_gradient_sketch(model, [model.fc1], [(x, y)], CE, m=16)


def test_output_not_reaching_the_loss_and_inplace_input_are_errors():
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.side = nn.Linear(4, 2)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            self.side(x)  # called, but its output is dropped
            return self.fc(x)

    class Mutates(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            h = torch.tanh(x)
            out = self.fc(h)
            h.mul_(2)  # the layer's input changes after the layer ran
            return out

    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    model = Detached()
    with pytest.raises(ValueError, match="'side' does not reach the loss"):
        model_gradient_sketch(model, [model.side, model.fc], [(x, y)], CE, m=16)
    model = Mutates()
    with pytest.raises(RuntimeError, match="'fc' was modified in place"):
        model_gradient_sketch(model, [model.fc], [(x, y)], CE, m=16)


def test_budget_slices_and_memmap_output(tmp_path):
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    layers = [model[0], model[3]]
    x, y = torch.randn(12, 3, 6, 6), torch.randint(0, 4, (12,))
    whole, rec = model_gradient_sketch(model, layers, [(x, y)], CE, m=32, k=2)
    assert rec["sample_rows"] is None                 # no batch needed slicing
    _, rec = model_gradient_sketch(model, layers, [(x[:7], y[:7]), (x[7:], y[7:])], CE, m=32, k=2)
    assert rec["sample_rows"] is None                 # an uneven last batch is not a slice
    # room for a few samples' patches only (about 6 KiB each) beyond the sketch kernels' own workspace
    # (per-thread buffers, counted by the plan): the batch is sketched in slices, with the same result
    from sketchprune.ops.sketch import outer_sketch_workspace, sparse_sign_sketch_workspace
    kernels = max([outer_sketch_workspace(r, t, c, o, 32, 2) for r in (1, 5, 7) for t, c, o in ((36, 27, 8), (1, 288, 4))]
                  + [sparse_sign_sketch_workspace(r, o, 32, 2) for r in (1, 5, 7) for o in (8, 4)])
    budget = 30_000 + kernels
    mm = np.lib.format.open_memmap(tmp_path / "sk.npy", mode="w+", dtype=np.float32, shape=(12, 32))
    sliced, rec = model_gradient_sketch(model, layers, [(x[:7], y[:7]), (x[7:], y[7:])], CE, m=32, k=2,
                                        budget=budget, out=mm)
    assert 1 <= rec["sample_rows"] < 7 and rec["workspace_bytes"] <= budget
    assert np.shares_memory(sliced.numpy(), mm)
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(BudgetError, match="layer '0'"):
        model_gradient_sketch(model, layers, [(x, y)], CE, m=32, k=2, budget=1000)
    with pytest.raises(ValueError, match="out has 10 rows"):
        model_gradient_sketch(model, layers, [(x, y)], CE, m=32, k=2, out=torch.zeros(10, 32))
    with pytest.raises(ValueError, match="out has 13 rows"):
        model_gradient_sketch(model, layers, [(x, y)], CE, m=32, k=2, out=torch.zeros(13, 32))
    with pytest.raises(ValueError, match="out must be a float32"):
        model_gradient_sketch(model, layers, [(x, y)], CE, m=32, k=2, out=torch.zeros(12, 16))


def _small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    return model, x, y, (lambda o, t: nn.functional.cross_entropy(o, t, reduction="none"))


def test_every_submodule_mode_restored():
    """A submodule the caller set apart (a BatchNorm frozen in eval inside a training model) keeps its
    mode, after a normal pass and after an error."""
    model, x, y, loss = _small()
    model.train()
    model[1].eval()
    model_gradient_sketch(model, [model[3]], [(x, y)], loss, m=16, k=4)
    assert model.training and not model[1].training and model[3].training
    with pytest.raises(ValueError):
        model_gradient_sketch(model, [model[3]], [(x, y)], lambda o, t: o.sum(), m=16, k=4)
    assert model.training and not model[1].training and model[3].training


def test_under_no_grad_and_inference_mode():
    model, x, y, loss = _small()
    ref, _ = model_gradient_sketch(model, [model[3]], [(x, y)], loss, m=16, k=4)
    with torch.no_grad():
        sk, _ = model_gradient_sketch(model, [model[3]], [(x, y)], loss, m=16, k=4)
    assert torch.equal(sk, ref)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        model_gradient_sketch(model, [model[3]], [(x, y)], loss, m=16, k=4)


def test_empty_batch_adds_no_rows():
    model, x, y, loss = _small()
    ref, _ = model_gradient_sketch(model, [model[3]], [(x, y)], loss, m=16, k=4)
    sk, rec = model_gradient_sketch(model, [model[3]], [(x[:0], y[:0]), (x, y)], loss, m=16, k=4)
    assert torch.equal(sk, ref) and rec["batches"] == 2


@pytest.mark.parametrize("labels, err, match", [
    (torch.rand(20) * 3, TypeError, "integer class ids"),
    (torch.zeros(19, dtype=torch.long), ValueError, "one class id per sample"),
    (torch.full((20,), 3), ValueError, r"in \[0, num_classes=3\)"),
])
def test_linear_probe_label_checks(labels, err, match):
    with pytest.raises(err, match=match):
        linear_probe_sketch(torch.randn(20, 5), labels, 3, m=16)
    with pytest.raises(ValueError, match="2-D"):
        linear_probe_sketch(torch.randn(20), "random", 3, m=16)


def test_linear_probe_accepts_numpy_features():
    x = torch.randn(40, 7, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(6))
    a, _ = linear_probe_sketch(x.numpy(), y, 3, m=16, seed=2)
    b, _ = linear_probe_sketch(x, y, 3, m=16, seed=2)
    assert torch.equal(a, b)
    c, _ = linear_probe_sketch(x.clone().requires_grad_(True), y, 3, m=16, seed=2)
    assert torch.equal(c, b)
    with pytest.raises(ValueError, match="features must be a 2-D tensor or numpy array"):
        linear_probe_sketch(x.numpy()[0], y, 3, m=16)


def test_linear_probe_plans_its_blocks_from_the_budget(tmp_path, monkeypatch):
    """Rows go through in blocks sized by ``budget`` (the same sketch as one block); a budget too
    small for one row is a BudgetError before any work; big-endian and read-only memmap features
    are read a block at a time, never copied whole."""
    import sketchprune.select.gradients as gm

    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 40, generator=g)
    y = torch.randint(0, 6, (300,), generator=g)
    full, rec = linear_probe_sketch(x, y, 6, m=32, k=4, seed=1)
    assert rec["rows_per_block"] == 300
    small, rec_s = linear_probe_sketch(x, y, 6, m=32, k=4, seed=1, budget="64KiB")
    assert 1 <= rec_s["rows_per_block"] < 300 and rec_s["budget"] == "Budget(64.00 KiB)"
    assert torch.equal(small, full)                 # p is uniform at the zero init: blocking changes nothing
    one, _ = linear_probe_sketch(x, y, 6, m=32, k=4, seed=1, chunk=1)
    assert torch.equal(one, full)
    with pytest.raises(BudgetError, match=r"linear_probe_sketch \(300 x 40 features, 6 classes, m = 32\)"):
        linear_probe_sketch(x, y, 6, m=32, k=4, seed=1, budget="1KiB")
    # numpy: a big-endian memmap, read-only; the blocks it is read in are those of the plan
    path = tmp_path / "f.npy"
    np.save(path, x.numpy().astype(">f4"))
    mm = np.load(path, mmap_mode="r")
    assert not mm.dtype.isnative
    reads = []
    real = gm._rows
    monkeypatch.setattr(gm, "_rows", lambda f, i, j, dev: reads.append(j - i) or real(f, i, j, dev))
    b, rec_b = linear_probe_sketch(mm, y, 6, m=32, k=4, seed=1, budget="64KiB")
    assert torch.equal(b, full) and max(reads) == rec_b["rows_per_block"] < 300 and sum(reads) == 300
    with pytest.raises(ValueError, match="features has unsupported dtype complex64"):
        linear_probe_sketch(np.zeros((4, 3), np.complex64), "random", 2, m=8)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        linear_probe_sketch(x, "random", 0, m=8)
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        linear_probe_sketch(x, "random", 2, m=8, chunk=0)
    empty, _ = linear_probe_sketch(x[:0], y[:0], 6, m=32, k=4)
    assert empty.shape == (0, 32)


def test_a_hook_that_replaces_the_output_does_not_change_the_sketch():
    """The caller's hooks keep running; the sketch is of the layer's own gradient, taken at the
    output as the layer made it (a hook scaling it by 3 once gave a sketch 1/3 too small)."""
    torch.manual_seed(20)
    model = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 4))
    x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
    seen = []
    model[0].register_forward_hook(lambda mod, a, out: seen.append(1) or out * 3.0)
    sk, _ = model_gradient_sketch(model, [model[0]], [(x, y)], CE, m=32, k=4, seed=1)
    assert seen                                        # it ran
    G64 = _formed(model, [model[0]], x, y, CE, torch.float64)   # the copy keeps the hook: the model's true gradient
    oracle = sparse_sign_sketch_ref(G64, 32, 4, 1, 0, compute_dtype=torch.float64)
    torch.testing.assert_close(sk.double(), oracle, rtol=1e-4, atol=1e-5)
    assert len(model[0]._forward_hooks) == 1            # only the caller's is left


@pytest.mark.parametrize("kind", ["linear-forward", "conv-forward", "weight-norm"])
def test_layers_that_compute_something_else_are_refused(kind):
    class HalfLinear(nn.Linear):
        def forward(self, x):
            return nn.functional.linear(x, 0.5 * self.weight, self.bias)

    class PaddedConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))

    layer = {"linear-forward": lambda: HalfLinear(6, 4), "conv-forward": lambda: PaddedConv(3, 4, 3),
             "weight-norm": lambda: nn.utils.parametrizations.weight_norm(nn.Linear(6, 4))}[kind]()
    model = nn.Sequential(layer)
    with pytest.raises(TypeError, match="layer '0' (is a .* with its own forward|has a parametrized weight)"):
        model_gradient_sketch(model, [layer], [(torch.randn(2, 6), torch.zeros(2, dtype=torch.long))], CE, m=8, k=2)


def test_keyword_calls_batches_and_sizes_are_clear_errors():
    class KwCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(input=x)

    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    model = KwCall()
    with pytest.raises(ValueError, match="'fc' was called with its input as a keyword argument"):
        model_gradient_sketch(model, [model.fc], [(x, y)], CE, m=8, k=2)
    plain = nn.Sequential(nn.Linear(6, 3))
    for batch, got in (({"x": x, "y": y}, "a dict"), ((x, y, torch.arange(4)), "a tuple of 3")):
        with pytest.raises(ValueError, match=f"batch 0 is {got}; batches must be \\(inputs, targets\\) pairs"):
            model_gradient_sketch(plain, [plain[0]], [batch], CE, m=8, k=2)

    def batches():                                     # nothing is pulled before the sizes are checked
        raise AssertionError("a batch was read before m and k were checked")
        yield
    with pytest.raises(ValueError, match="m"):
        model_gradient_sketch(plain, [plain[0]], batches(), CE, m=4, k=8)
    with pytest.raises((TypeError, ValueError), match="m"):
        model_gradient_sketch(plain, [plain[0]], batches(), CE, m=16.5, k=2)
