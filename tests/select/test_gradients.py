import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import sketchprune as sp
from sketchprune.select.gradients import linear_probe_sketch, model_gradient_sketch


def _formed(model, layers, x, y, loss_fn):
    """Per-sample gradients formed explicitly with torch.func, flattened in the sketch's layout."""
    names = [n for n, p in model.named_parameters() if any(p is q for l in layers for q in l.parameters(recurse=False))]
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_one(ps, xi, yi):
        full = dict(params, **ps)
        return loss_fn(functional_call(model, full, (xi[None],)), yi[None]).sum()

    g = vmap(grad(loss_one), in_dims=(None, 0, 0))({n: params[n] for n in names}, x, y)
    return torch.cat([g[n].reshape(x.shape[0], -1) for n in names], 1)


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
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    layers = [model[0], model[5]]
    sk, rec = model_gradient_sketch(model, layers, [(x[:6], y[:6]), (x[6:], y[6:])], loss_fn, m=64, k=4, seed=1)
    G = _formed(model, layers, x, y, loss_fn)
    assert rec["r"] == G.shape[1] == 2 * 3 * 9 + 3 + 6 * 4 + 4
    assert torch.allclose(sk, sp.sparse_sign_sketch(G, 64, 4, 1), rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind


def test_model_gradients_sequence_linear():
    torch.manual_seed(1)
    lin = nn.Linear(5, 3)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), lin)
    x = torch.randn(7, 6, 4)  # T = 6 tokens per sample

    def loss_fn(out, _):
        return out.pow(2).sum((1, 2))

    sk, _ = model_gradient_sketch(model, [lin], [(x, None)], loss_fn, m=16, k=2, seed=5)
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_one(ps, xi):
        return loss_fn(functional_call(model, dict(params, **ps), (xi[None],)), None).sum()

    g = vmap(grad(loss_one), in_dims=(None, 0))({"2.weight": params["2.weight"], "2.bias": params["2.bias"]}, x)
    G = torch.cat([g["2.weight"].reshape(7, -1), g["2.bias"]], 1)
    assert torch.allclose(sk, sp.sparse_sign_sketch(G, 16, 2, 5), rtol=1e-4, atol=1e-5)
