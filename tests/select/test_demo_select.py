"""The Fashion-MNIST selection demo: its metrics, and the whole flow on small synthetic images."""

from __future__ import annotations

import pytest
import torch

from sketchprune import demo_select as D


def test_metrics_against_a_direct_count():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (200,), generator=g)
    pred = torch.where(torch.rand(200, generator=g) < 0.7, y, torch.randint(0, 4, (200,), generator=g))
    acc, f1 = D.metrics(pred, y, num_classes=4)
    assert acc == pytest.approx(float((pred == y).double().mean()))
    f1s = []
    for c in range(4):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    assert f1 == pytest.approx(sum(f1s) / 4)


def test_confidence_interval():
    m, h = D._ci([1.0, 2.0, 3.0])
    assert m == pytest.approx(2.0)
    assert h == pytest.approx(4.303 * 1.0 / 3 ** 0.5)


def test_demo_runs_on_synthetic_images(monkeypatch, capsys):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (900,), generator=g)
    # class-dependent images so the probe learns something
    proto = torch.randint(0, 256, (10, 28, 28), generator=g).float()
    x = (0.6 * proto[y] + 0.4 * torch.randint(0, 256, (900, 28, 28), generator=g).float()).to(torch.uint8)

    def load(split):
        return (x[:700], y[:700]) if split == "train" else (x[700:], y[700:])

    import sketchprune.datasets as ds

    monkeypatch.setattr(ds, "load_fashion_mnist", load)
    monkeypatch.setattr(D, "N_PRETRAIN", 300)
    res = D.main(["--n", "60", "--pool", "400", "--seeds", "2", "--m", "32", "--epochs", "1"])
    for method in ("skmm", "uniform"):
        assert len(res["accuracy"][method]) == 2
        assert all(0.3 < a <= 1.0 for a in res["accuracy"][method])  # far above chance (0.1)
    assert "SkMM - uniform" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--n", "0"], ["--n", "20", "--pool", "10"], ["--seeds", "0"]])
def test_demo_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit):
        D.main(argv)
