"""Triton twin of csrc/common/sketch_hash.h (the hash that *defines* the sparse-sign sketch).

Row j (a 64-bit global row index, j = offset + i) of the r x m matrix S has exactly k
nonzeros, one in each of k contiguous column blocks:

    block t (0 <= t < k):  start_t = floor(t * m / k),
                           width_t = floor((t + 1) * m / k) - start_t   (>= 1 since m >= k)
    H      = mix64(mix64(seed) + j * C1 + t * C2)          (all arithmetic mod 2^64)
    column = start_t + ((H >> 32) mod width_t)
    value  = (H & 1 ? -1 : +1) / sqrt(k)

Everything here is tl.uint64 arithmetic: multiplication wraps modulo 2^64 and ``>>`` is a
logical shift, exactly like the C++ (checked bit-for-bit against a plain-Python oracle under
TRITON_INTERPRET=1 and on a GPU).  ``(H >> 32) mod width`` is evaluated in uint32 (H >> 32
< 2^32; the contract needs m < 2^31) -- the same value as the 64-bit remainder, and a cheap
32-bit division on the GPU.

seed and offset travel as two int32-range halves (split_i64 on the host, join_u64 in the kernel),
see split_i64.  The helpers take scalars that may arrive as i32, i64 or a specialised constexpr; ``as_u64``
normalises an int64 *value* (seed, offset: int64 reinterpreted as uint64) to its uint64 bit
pattern (sign-extending an i32 first).
"""

import triton
import triton.language as tl

HASH_C1 = 0x9E3779B97F4A7C15
HASH_C2 = 0xD1B54A32D192ED03
MIX_M1 = 0xBF58476D1CE4E5B9
MIX_M2 = 0x94D049BB133111EB


@triton.jit
def as_u64(v):
    """int64 value (i32 / i64 / constexpr) -> its uint64 bit pattern."""
    # value casts, not a bitcast: int64 -> uint64 of the same width is a no-op in compiled
    # code, and it also copes with the interpreter's scalars (it stores ints in [2^31, 2^32)
    # as numpy uint32 while typing them i64).
    return tl.cast(tl.cast(v, tl.int64), tl.uint64)


@triton.jit
def join_u64(hi, lo):
    """uint64 bit pattern of hi * 2^32 + lo from two int32-range halves (see split_i64)."""
    return (as_u64(hi) << 32) + as_u64(lo)


def split_i64(v):
    """Host side: int64 (or uint64) value v -> (hi, lo), both in int32 range, hi * 2^32 + lo == v
    (mod 2^64).  Kernels take seed and offset this way because torch.compile's Inductor cannot
    pass Python int constants outside the int32 range to user Triton kernels (it crashes in
    signature_of on them); join_u64 rebuilds the bits in the kernel.  Plain int arithmetic,
    also fine on SymInts."""
    lo = (v + 2**31) % 2**32 - 2**31
    hi = ((v - lo) // 2**32 + 2**31) % 2**32 - 2**31
    return hi, lo


@triton.jit
def mix64(z):
    """splitmix64 finaliser on tl.uint64 (scalar or block)."""
    z = z ^ (z >> 30)
    z = z * 0xBF58476D1CE4E5B9
    z = z ^ (z >> 27)
    z = z * 0x94D049BB133111EB
    z = z ^ (z >> 31)
    return z


@triton.jit
def sketch_hash(seed_mixed, j, t):
    """H(seed, j, t); seed_mixed = mix64(seed) (uint64), j uint64 (block), t uint64."""
    return mix64(seed_mixed + j * 0x9E3779B97F4A7C15 + t * 0xD1B54A32D192ED03)


@triton.jit
def block_start(t, m, k):
    """floor(t * m / k) in int64."""
    return (tl.cast(t, tl.int64) * tl.cast(m, tl.int64)) // tl.cast(k, tl.int64)


@triton.jit
def block_of_column(c, m, k):
    """The block t with start_t <= c < start_{t+1}, i.e. ceil((c + 1) k / m) - 1 (int64)."""
    return ((tl.cast(c, tl.int64) + 1) * tl.cast(k, tl.int64) - 1) // tl.cast(m, tl.int64)


@triton.jit
def sketch_entry(seed_mixed, j, t, m, k):
    """(column int64, sign float32 +-1) of nonzero t of rows j (uint64 block).

    The 1/sqrt(k) scale is applied by the caller, as in the C++.
    """
    start = block_start(t, m, k)
    width = block_start(t + 1, m, k) - start
    h = sketch_hash(seed_mixed, j, tl.cast(tl.cast(t, tl.int64), tl.uint64, bitcast=True))
    hi = tl.cast(h >> 32, tl.uint32)
    col = start + tl.cast(hi % tl.cast(width, tl.uint32), tl.int64)
    sign = tl.where((h & 1) != 0, -1.0, 1.0)
    return col, sign
