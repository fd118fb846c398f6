"""The torch (and plain-int) twin of csrc/common/sketch_hash.h, which defines S.

Row j of the r x m sparse-sign matrix S has k nonzeros, one per column block t:
    start_t = t*m // k,  width_t = (t+1)*m // k - start_t
    H       = mix64(mix64(seed) + j*C1 + t*C2)   (mod 2^64)
    column  = start_t + ((H >> 32) mod width_t),  value = (-1 if H & 1 else +1) / sqrt(k)
torch has no uint64 arithmetic, so int64 tensors carry the bits: multiplication wraps
modulo 2^64 the same way, and logical right shifts are arithmetic shifts with the
sign-extended bits masked off.
"""

from __future__ import annotations

import math

import torch

MASK64 = (1 << 64) - 1
C1 = 0x9E3779B97F4A7C15
C2 = 0xD1B54A32D192ED03
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB


def _signed(c: int) -> int:
    c &= MASK64
    return c - (1 << 64) if c >= (1 << 63) else c


def mix64_int(z: int) -> int:
    """splitmix64 finaliser on a Python int (the plain-int oracle)."""
    z &= MASK64
    z ^= z >> 30
    z = (z * M1) & MASK64
    z ^= z >> 27
    z = (z * M2) & MASK64
    z ^= z >> 31
    return z


def sketch_entry_int(seed: int, j: int, t: int, m: int, k: int) -> tuple[int, int]:
    """(column, sign) of nonzero t of row j, in plain Python ints."""
    start = t * m // k
    width = (t + 1) * m // k - start
    h = mix64_int((mix64_int(seed) + j * C1 + t * C2) & MASK64)
    return start + (h >> 32) % width, (-1 if h & 1 else 1)


def _srl(z: torch.Tensor, s: int) -> torch.Tensor:
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    z = z ^ _srl(z, 30)
    z = z * _signed(M1)
    z = z ^ _srl(z, 27)
    z = z * _signed(M2)
    z = z ^ _srl(z, 31)
    return z


def sketch_entries(
    seed: int, j0: int, rows: int, m: int, k: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns (rows x k, int64) and signs (rows x k, +-1 float32) of S rows j0 .. j0+rows-1."""
    device = torch.device(device)
    seed_mixed = _signed(mix64_int(seed & MASK64))
    j = torch.arange(rows, dtype=torch.int64, device=device) + j0
    t = torch.arange(k, dtype=torch.int64, device=device)
    base = j * _signed(C1) + seed_mixed  # wraps mod 2^64
    h = _mix64(base[:, None] + t[None, :] * _signed(C2))
    start = (t * m) // k
    width = ((t + 1) * m) // k - start
    cols = start[None, :] + torch.remainder(_srl(h, 32), width[None, :])
    signs = 1.0 - 2.0 * (h & 1).to(torch.float32)
    return cols, signs


def sketch_matrix(
    seed: int, j0: int, rows: int, m: int, k: int, dtype=torch.float64, device="cpu"
) -> torch.Tensor:
    """Dense rows j0 .. j0+rows-1 of S (rows x m), values +-1/sqrt(k)."""
    cols, signs = sketch_entries(seed, j0, rows, m, k, device)
    s = torch.zeros(rows, m, dtype=dtype, device=device)
    s.scatter_(1, cols, signs.to(dtype) / math.sqrt(k))   # +-1 exactly, then the scale in ``dtype``
    return s
