import os
import subprocess
import sys

import pytest
import torch

import sketchprune as sp
from sketchprune import _backends, _native
from sketchprune._backends import BackendUnavailableError, use_backend


def test_ci_builds_every_native_module():
    """Under CI the build must not silently drop a module (a CUDA compile error fails here)."""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        pytest.skip("only enforced when CI=true")
    assert _native.cpu_module() is not None, _native.load_error("_C_cpu")
    assert _native.cuda_module() is not None, _native.load_error("_C_cuda")
    assert _backends.triton_importable(), "the test extra installs triton"


def test_cuda_module_imports_without_gpu():
    mod = _native.cuda_module()
    if mod is None:
        pytest.skip("CUDA module not built")
    info = mod.build_info()
    assert "archs" in info and "cuda_version" in info
    assert mod.device_count() == torch.cuda.device_count()


def test_explicit_unavailable_backend_is_an_error():
    x = torch.randn(4, 3)
    with use_backend("cuda"), pytest.raises(BackendUnavailableError, match="backend 'cuda' was requested"):
        sp.sparse_sign_sketch(x, 8, 2)


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend"):
        with use_backend("fortran"):
            pass


def test_env_override(monkeypatch):
    monkeypatch.setenv("SKETCHPRUNE_BACKEND", "torch")
    assert _backends.select("cov_accumulate_", torch.device("cpu")) == "torch"
    monkeypatch.setenv("SKETCHPRUNE_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="SKETCHPRUNE_BACKEND"):
        _backends.select("cov_accumulate_", torch.device("cpu"))
    monkeypatch.setenv("SKETCHPRUNE_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError):
        sp.cov_accumulate_(torch.zeros(2, 2), torch.randn(3, 2))


def test_context_beats_env(monkeypatch):
    monkeypatch.setenv("SKETCHPRUNE_BACKEND", "cuda")
    with use_backend("torch"):
        assert _backends.select("gather_slices", torch.device("cpu")) == "torch"


def test_auto_prefers_compiled_cpu():
    if _native.cpu_module() is None:
        pytest.skip("C++ CPU module not built")
    assert _backends.select("sparse_sign_sketch", torch.device("cpu")) == "cpu"


def test_info_command_runs():
    out = subprocess.run([sys.executable, "-m", "sketchprune.info"], capture_output=True, text=True, check=True)
    assert "cpu backends" in out.stdout and "C++ CPU module" in out.stdout


def test_info_does_not_call_cuda_backends_available_without_a_device():
    from sketchprune.info import report

    table = report()["backends"]["cuda"]
    if torch.cuda.is_available():
        assert "available" in table.values()
    else:
        assert "available" not in table.values()
        assert "no CUDA device" in table["torch"]
        if _native.cuda_module() is not None:
            assert "no CUDA device" in table["cuda"]


def test_cross_device_error():
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    with pytest.raises(ValueError, match="one device"):
        sp.cov_accumulate_(torch.zeros(3, 3), torch.randn(2, 3, device="cuda"))


def test_old_triton_interpreter_with_new_numpy_is_reported(monkeypatch):
    """Triton < 3.7's interpreter cannot run the kernels with NumPy >= 2.4: the triton CPU backend
    says so (and the version pairs that work are not refused)."""
    triton = pytest.importorskip("triton")
    import numpy

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cases = [("3.6.0", "2.4.6", True), ("3.6.0", "2.3.5", False), ("3.7.0", "2.4.6", False),
             ("3.10.1+git1234", "2.5.0.dev0", False), ("3.2.0", "2.4.0rc1", True)]
    try:
        for tv, nv, bad in cases:
            monkeypatch.setattr(triton, "__version__", tv)
            monkeypatch.setattr(numpy, "__version__", nv)
            _backends.triton_interpreter_problem.cache_clear()
            why = _backends.triton_interpreter_problem()
            assert (why is not None) == bad, (tv, nv, why)
            if bad:
                assert f"triton {tv}" in why and "numpy < 2.4" in why
                assert _backends.unavailable_reason("triton", "cpu") == why
                with pytest.raises(BackendUnavailableError, match="Triton 3.7"), use_backend("triton"):
                    sp.ops.cov_accumulate_(torch.zeros(3, 3), torch.ones(4, 3))
    finally:
        monkeypatch.undo()
        _backends.triton_interpreter_problem.cache_clear()


def test_cuda_backend_refuses_gpus_older_than_sm80(monkeypatch):
    """The CUDA module has sm_80+ kernels only: on an older GPU (a T4, 7.5) the backend is reported
    unavailable with the reason (so the auto choice moves on) instead of failing at launch."""
    class Mod:  # a module that sees the two GPUs
        device_count = staticmethod(lambda: 2)

    monkeypatch.setattr(_native, "cuda_module", lambda: Mod)
    caps = {0: (7, 5), 1: (8, 6)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: caps[i])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"gpu{i}")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    _backends.cuda_capability_problem.cache_clear()
    try:
        why = _backends.unavailable_reason("cuda", "cuda", torch.device("cuda", 0))
        assert why == "the CUDA module's kernels need compute capability >= 8.0 and cuda:0 (gpu0) has 7.5"
        assert _backends.unavailable_reason("cuda", "cuda", torch.device("cuda", 1)) is None
        assert _backends.unavailable_reason("cuda", "cuda", torch.device("cuda")) is None   # current: 1
        assert _backends.unavailable_reason("cuda", "cuda") is None                        # no device given
        with use_backend("cuda"):
            with pytest.raises(BackendUnavailableError, match="has 7.5"):
                _backends.select("gather_slices", torch.device("cuda", 0))
            assert _backends.select("gather_slices", torch.device("cuda", 1)) == "cuda"
        assert _backends.select("gather_slices", torch.device("cuda", 0), warn=False) != "cuda"
    finally:
        _backends.cuda_capability_problem.cache_clear()


def test_triton_interpreter_refuses_bf16_products(monkeypatch):
    """Under TRITON_INTERPRET=1 the interpreter's bf16 products are off by ~1e9: cov, cross and the
    sketch refuse bf16 on that path (outer_sketch and gather_slices are exact there and run)."""
    pytest.importorskip("triton")
    if not _backends.triton_interpreted() or _backends.unavailable_reason("triton", "cpu") is not None:
        pytest.skip("needs the Triton interpreter (TRITON_INTERPRET=1)")
    x = torch.randn(9, 4).bfloat16()
    with use_backend("triton"):
        with pytest.raises(TypeError, match="interpreter .* bfloat16"):
            sp.cov_accumulate_(torch.zeros(4, 4), x)
        with pytest.raises(TypeError, match="interpreter .* bfloat16"):
            sp.cross_accumulate_(torch.zeros(4, 4), x, x)
        with pytest.raises(TypeError, match="interpreter .* bfloat16"):
            sp.sparse_sign_sketch(x, 8, 2)
        a, d = torch.randn(3, 2, 5).bfloat16(), torch.randn(3, 2, 4).bfloat16()
        out = sp.outer_sketch(a, d, 8, 2)
    with use_backend("torch"):
        assert torch.allclose(out, sp.outer_sketch(a, d, 8, 2), rtol=1e-2, atol=1e-2)


def test_import_is_light():
    """`import sketchprune` imports neither triton nor torch's compiler stack (it did, ~1.2 s, by
    registering the Triton ops at import); they load when the triton backend is first considered."""
    code = ("import sys, sketchprune as sp; heavy = [m for m in ('triton', 'torch._dynamo', 'torch._inductor', "
            "'transformers') if m in sys.modules]; assert not heavy, heavy; "
            "from sketchprune.ops import _triton_reg; assert not _triton_reg._state['tried']")
    env = {k: v for k, v in os.environ.items() if k not in ("SKETCHPRUNE_BACKEND",)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]


def test_cuda_module_that_sees_no_device_is_unavailable(monkeypatch):
    """A CUDA module whose statically linked runtime is newer than the driver sees no device while
    torch does: the backend is reported unavailable with the reason, not picked and failing."""
    import sketchprune._backends as b
    import sketchprune._native as nat

    class Mod:
        @staticmethod
        def device_count():
            return 0

        @staticmethod
        def build_info():
            return {"cuda_version": "13.0.88", "archs": "80,90a"}

    monkeypatch.setattr(nat, "cuda_module", lambda: Mod)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (9, 0))
    msg = b.cuda_capability_problem.__wrapped__(0)
    assert "sees no CUDA device while torch sees 1" in msg and "CUDA 13.0.88" in msg and "driver" in msg
