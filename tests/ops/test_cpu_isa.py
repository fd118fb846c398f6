"""The C++ CPU module picks its instruction set at run time (generic / AVX2 / AVX-512); every
variant must compute the same function.  SKETCHPRUNE_CPU_ISA caps the choice, and is read once
per process, so each variant runs in a subprocess."""

import os
import subprocess
import sys

import pytest

from sketchprune import _native

SCRIPT = r"""
import torch, sketchprune as sp
from sketchprune.ref import sketch_matrix
info = sp._native.cpu_module().build_info()
torch.manual_seed(0)
x = torch.randn(301, 70)
sig = torch.zeros(70, 70)
sp.cov_accumulate_(sig, x, 0.5)
ref = 0.5 * x.double().T @ x.double()
assert torch.equal(sig, sig.T)
assert ((sig.double() - ref).norm() / ref.norm()) < 1e-5
g = torch.randn(19, 333)
out = sp.sparse_sign_sketch(g, 40, 5, 3, 2**33)
oref = g.double() @ sketch_matrix(3, 2**33, 333, 40, 5)
assert ((out.double() - oref).norm() / oref.norm()) < 1e-5
a, d = torch.randn(6, 3, 9), torch.randn(6, 3, 7)
o = sp.outer_sketch(a, d, 32, 4, 1, 5)
gr = torch.einsum("nto,ntq->noq", d.double(), a.double()).reshape(6, -1)
oref = gr @ sketch_matrix(1, 5, 63, 32, 4)
assert ((o.double() - oref).norm() / oref.norm()) < 1e-5
for k in (1, 6, 8, 13):  # row hashing: one masked vector (k = 1, 6), one full, two (the second masked)
    out = sp.sparse_sign_sketch(g, 40, k, 9, 2**40 + 1)
    oref = g.double() @ sketch_matrix(9, 2**40 + 1, 333, 40, k)
    assert ((out.double() - oref).norm() / oref.norm()) < 1e-5, k
# AVX-512 hashes rows in vectors; the path is verified entry by entry when chosen, and must be
# the one in use (not a fallback); k = 1 hashes faster on the scalar path
expect = "vector" if info.get("isa") == "avx512" else "fast"
assert info["row_hash"] == expect and info["row_hash_k13"] == expect and info["row_hash_k1"] == "fast", info
print("ISA", info.get("isa"))
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_cpu_isa_variant(isa):
    if _native.cpu_module() is None:
        pytest.skip("C++ CPU module not built")
    env = dict(os.environ, SKETCHPRUNE_CPU_ISA=isa, SKETCHPRUNE_BACKEND="cpu")
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    used = res.stdout.split("ISA")[-1].strip()
    if used != isa:
        pytest.skip(f"this CPU does not support {isa} (ran {used})")
