import warnings

import numpy as np
import pytest
import torch

from sketchprune.select import ModelOutputs, intrinsic_dimension, moment_problem, select, skmm_select
from sketchprune.select.api import METHODS
from sketchprune.select.variance import variance_problem


def _data(N=90, m=8, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    sk = torch.randn(N, m, generator=g)
    probs = torch.softmax(torch.randn(N, C, generator=g), 1)
    labels = torch.randint(0, C, (N,), generator=g)
    return sk, probs, labels, torch.rand(N, generator=g)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_exactly_n_distinct(method):
    sk, probs, labels, gn = _data()
    g = torch.Generator().manual_seed(9)
    out = ModelOutputs(features=sk, head_weight=torch.randn(3, 8, generator=g), labels=labels, grad_norms=gn,
                       correctness=torch.rand(4, 90, generator=g) < 0.5)
    for n in (1, 17, 90):
        sel = select(n, method, sk, outputs=out, seed=2)
        idx = sel.indices
        assert idx.numel() == n and torch.unique(idx).numel() == n and int(idx.max()) < 90
        assert sel.info["method"] == method and sel.info["n"] == n
        assert "variance_proxy" in sel.info


@pytest.mark.parametrize("method", ["skmm", "kcenter", "entropy"])
def test_class_balanced(method):
    sk, probs, labels, gn = _data(N=120)
    sel = select(30, method, sk, probs=probs, labels=labels, class_balanced=True, seed=0)
    assert sel.indices.numel() == 30 and torch.unique(sel.indices).numel() == 30
    counts = torch.bincount(labels[sel.indices], minlength=3).double()
    expect = torch.bincount(labels, minlength=3).double() * 30 / 120
    assert ((counts - expect).abs() < 1.0 + 1e-9).all()


def test_errors():
    sk, probs, labels, _ = _data()
    with pytest.raises(ValueError, match="unknown selection method"):
        select(5, "magic", sk)
    with pytest.raises(ValueError, match="needs probs"):
        select(5, "entropy", sk)
    with pytest.raises(ValueError, match="n must be in"):
        select(91, "uniform", sk)
    with pytest.raises(ValueError, match="needs labels"):
        select(5, "el2n", sk, probs=probs)


def test_skmm_is_class_balanced_by_default_when_labels_are_given():
    sk, probs, labels, _ = _data(N=150, seed=3)
    sel = select(30, "skmm", sk, labels=labels, seed=1)
    assert sel.info["class_balanced"] and sel.info["n"] == 30 and set(sel.info["per_class"]) == {0, 1, 2}
    counts = torch.bincount(labels[sel.indices], minlength=3).double()
    expect = torch.bincount(labels, minlength=3).double() * 30 / 150
    assert ((counts - expect).abs() < 1.0 + 1e-9).all()
    assert all("top_mass" in v and "iterations" in v for v in sel.info["per_class"].values())
    pooled = select(30, "skmm", sk, labels=labels, seed=1, class_balanced=False)
    assert "class_balanced" not in pooled.info and pooled.info["rounding"] == "greedy"
    assert torch.equal(pooled.indices, select(30, "skmm", sk, seed=1).indices)  # labels unused when pooled
    # the other methods stay pooled unless asked
    assert "class_balanced" not in select(30, "uniform", sk, labels=labels, seed=1).info
    with pytest.raises(ValueError, match="needs labels"):
        select(30, "skmm", sk, class_balanced=True)


def test_select_names_non_finite_sketch_rows():
    sk = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    sk[7, 2], sk[31, 0] = float("nan"), float("-inf")
    for method in ("skmm", "uniform", "kcenter"):
        with pytest.raises(ValueError, match=r"NaN or Inf values in 2 of 40 rows \(7, 31\)"):
            select(5, method, sk)


@pytest.mark.parametrize("call, err, match", [
    (lambda sk: select(3, "uniform", sk, rank=3), TypeError, "method 'uniform' does not use rank"),
    (lambda sk: select(3, "skmm", sk, c=0.5), TypeError, "formulation='variance' does not use c"),
    (lambda sk: select(3, "skmm", sk, formulation="maxmin", weighting="relative"), TypeError, "does not use weighting"),
    (lambda sk: select(3, "skmm", sk, formulation="nope"), ValueError, "formulation must be one of"),
    (lambda sk: select(3, "skmm", sk, formulation="hinge", tol=-1.0), ValueError, "tol must be a positive"),
    (lambda sk: select(3, "skmm", sk, formulation="hinge", max_iter=0), ValueError, "max_iter must be"),
    (lambda sk: select(3, "leverage", sk, rank=0), ValueError, "rank must be a positive integer"),
    (lambda sk: select(3, "ridge-leverage", sk, ridge=-1.0), ValueError, "ridge must be a positive number"),
    (lambda sk: select(2.5, "uniform", sk), TypeError, "n must be an integer"),
    (lambda sk: select(3, "skmm", sk[:, 0]), ValueError, "sketch must be a 2-D float tensor"),
    (lambda sk: select(3, "skmm", sk, labels=torch.rand(sk.shape[0]) * 3), TypeError, "integer class ids"),
    (lambda sk: select(3, "skmm", sk, labels=torch.zeros(sk.shape[0], 1, dtype=torch.long)), ValueError, "1-D"),
    (lambda sk: select(3, "skmm", sk, labels=torch.arange(sk.shape[0]) - 1), ValueError, "class ids >= 0"),
    (lambda sk: select(3, "kcenter", torch.zeros_like(sk)), ValueError, "sketch is all zero"),
    (lambda sk: select(3, "skmm", torch.zeros_like(sk)), ValueError, "sketch is all zero"),
    (lambda sk: select(3, "grand", grad_norms=torch.rand(sk.shape[0], 2)), ValueError, "grad_norms must be a 1-D"),
    (lambda sk: select(3, "grand", grad_norms=torch.full((sk.shape[0],), float("nan"))), ValueError, "NaN"),
    (lambda sk: select(3, "margin", probs=torch.ones(sk.shape[0], 1)), ValueError, "at least 2 classes"),
])
def test_bad_arguments_named(call, err, match):
    sk, *_ = _data()
    with pytest.raises(err, match=match):
        call(sk)


def test_numpy_and_tensor_scalars_accepted_as_options():
    sk, *_ = _data()
    a = select(5, "leverage", sk, rank=np.int64(3), seed=1)
    b = select(5, "leverage", sk, rank=3, seed=1)
    assert torch.equal(a.indices, b.indices)
    select(5, "skmm", sk, formulation="hinge", tol=np.float32(1e-3), max_iter=np.int64(50))
    with pytest.raises(TypeError, match="greedy design .* does not use tol"):
        select(5, "skmm", sk, tol=1e-3)


def test_numpy_sketch_accepted():
    sk, *_ = _data()
    a = select(5, "skmm", sk.numpy(), seed=1)
    b = select(5, "skmm", sk, seed=1)
    assert torch.equal(a.indices, b.indices)


@pytest.mark.parametrize("formulation", ["hinge", "maxmin"])
def test_identical_rows_do_not_break_the_relaxed_solvers(formulation):
    """Every row the same gradient: the moments are constant on the simplex (zero curvature), so any
    point is optimal; the solver must not divide by ~0 (it returned all-zero weights before)."""
    sk = torch.zeros(50, 8)
    sk[:, 0] = 1.0
    sel = select(5, "skmm", sk, formulation=formulation, seed=0)
    assert sel.indices.numel() == 5 and torch.unique(sel.indices).numel() == 5
    assert sel.weights.sum().item() == pytest.approx(1.0) and bool(torch.isfinite(sel.weights).all())


def test_glister_head_without_bias_and_labels_short_of_its_classes():
    g = torch.Generator().manual_seed(3)
    out = ModelOutputs(features=torch.randn(40, 5, generator=g), labels=torch.arange(40) % 3,
                       head_weight=torch.randn(4, 5, generator=g))   # 4 classes, labels reach 3
    for cb in (False, True):
        sel = select(6, "glister", outputs=out, class_balanced=cb)
        assert sel.indices.numel() == 6 and torch.unique(sel.indices).numel() == 6


def test_class_balanced_error_names_the_class():
    sk, *_ = _data()
    sk = sk.clone()
    labels = torch.arange(sk.shape[0]) % 3
    sk[labels == 1] = 0.0
    with pytest.raises(ValueError, match="class 1 .*sketch is all zero"):
        select(6, "skmm", sk, labels=labels)


@pytest.mark.parametrize("method, options", [("skmm", {}), ("skmm", {"formulation": "hinge"}),
                                             ("skmm", {"formulation": "maxmin"}),
                                             ("skmm", {"formulation": "paper", "iters": 50}),
                                             ("kcenter", {}), ("herding", {}), ("adaptive", {}),
                                             ("ridge-leverage", {})])
def test_a_sketch_that_requires_grad_is_read_detached(method, options):
    sk, *_ = _data(N=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = select(6, method, sk.clone().requires_grad_(True), seed=1, **options)
        direct = skmm_select(sk.clone().requires_grad_(True), 6, seed=1, **options) if method == "skmm" else None
    want = select(6, method, sk, seed=1, **options)
    assert torch.equal(got.indices, want.indices)
    if direct is not None:
        assert torch.equal(direct.indices, want.indices)


@pytest.mark.parametrize("formulation", ["variance", "hinge", "maxmin", "paper"])
def test_skmm_select_names_non_finite_rows(formulation):
    sk, *_ = _data(N=40)
    sk = sk.clone()
    sk[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf values in 1 of 40 rows \(3\)"):
        skmm_select(sk, 5, formulation=formulation)


def test_eigenproblem_builders_name_non_finite_rows():
    sk, *_ = _data(N=40)
    sk = sk.clone()
    sk[[5, 9], 0] = float("inf")
    for build in (moment_problem, intrinsic_dimension, lambda x: variance_problem(x)):
        with pytest.raises(ValueError, match=r"NaN or Inf values in 2 of 40 rows \(5, 9\)"):
            build(sk)


def test_argument_messages():
    sk, _, labels, _ = _data()
    with pytest.raises(ValueError, match=r"class_balanced=True needs labels \(labels=\.\.\. or ModelOutputs"):
        select(5, "kcenter", sk, class_balanced=True)
    with pytest.raises(ValueError, match=r"rounding must be one of 'greedy', 'sample', 'top' for "
                                         r"formulation='variance', got 'bogus'"):
        skmm_select(sk, 5, rounding="bogus")
    with pytest.raises(ValueError, match=r"rounding must be one of 'sample', 'top' for formulation='hinge'"):
        skmm_select(sk, 5, formulation="hinge", rounding="bogus")
    with pytest.raises(ValueError, match="formulation must be one of"):
        skmm_select(sk, 5, formulation="bogus")
    for c in (0.0, -0.5):
        with pytest.raises(ValueError, match=r"c must be in \(0, 1\), got") as e:
            select(5, "skmm", sk, formulation="hinge", c=c)
        assert "c >= 1" not in str(e.value)
    with pytest.raises(ValueError, match="with c >= 1 uniform weights already satisfy"):
        select(5, "skmm", sk, formulation="hinge", c=1.0)
    for call in (lambda: select(True, "uniform", sk), lambda: skmm_select(sk, True),
                 lambda: select(np.bool_(True), "kcenter", sk)):
        with pytest.raises(TypeError, match="n must be an integer"):
            call()
    assert select(np.int64(5), "uniform", sk).indices.numel() == 5
    with pytest.raises(ValueError, match=r"n must be in \[1, N=90\]"):
        skmm_select(sk, 91)
