"""sparse_sign_sketch: out (N x m, fp32) (=|+=) g (N x r) @ S, S the implicit sparse-sign matrix.

Math / contract (docs/native_abi.md, "sparse_sign_sketch"; S defined by
csrc/common/sketch_hash.h, Triton twin in _hash.py):
  row i of g meets row j = offset + i (uint64 arithmetic) of S; row j of S has exactly k
  nonzeros +-1/sqrt(k), at column start_t + ((H >> 32) mod width_t) of block t (0 <= t < k),
  sign from H & 1.  out is (N, m) float32 contiguous; g is (N, r) float32 / float16 /
  bfloat16 contiguous (row stride ldg); accumulation in fp32.  accumulate=False writes every
  element of out (r == 0 gives zeros); True adds.  m >= k >= 1, m < 2^31; offset any int64.

Kernel: program (sample tile BLOCK_N, column tile BLOCK_M, row split s).  It loops over its
rows of g in chunks of BLOCK_R: the hashes of the S rows of the chunk are computed once per
chunk for each block t that overlaps the column tile (usually 1-2 blocks; all of them when
m/k < BLOCK_M), the dense tile of sqrt(k) * S (entries -1, 0, +1, exact in every float format)
is built in registers with compare-selects, and multiplied with the g tile on the tensor
cores with fp32 accumulation.  On a GPU the product is formed transposed (TRANS):
acc^T (BLOCK_M x BLOCK_N) += S_tile^T @ g_tile^T, so the register-built S tile is the A operand
(measured ~2x faster on an H100 than g_tile @ S_tile, which routes S through shared memory);
under the interpreter the plain orientation is used.  1/sqrt(k) (correctly rounded) is applied
once at the end.  Dot modes (MODE):
  0: fp16/bf16 g against an fp16/bf16 +-1 tile (products exact, fp32 accumulation);
  1: fp32 g, input_precision="ieee" (FMA path; used under TRITON_INTERPRET, on CPU tensors);
  2: fp32 g on a GPU, split exactly into three bf16 terms g = hi + mid + lo (8 + 8 + 8 mantissa
     bits; bf16 has fp32's exponent range, so only |g| < ~1e-36 loses low bits) and three bf16
     tensor-core dots with fp32 accumulation: exact products, ~3x a bf16 dot, far faster than
     the FMA path.  (The interpreter's bf16 dot is wrong, hence MODE 1 there.)
Row split: when cdiv(N, BLOCK_N) * cdiv(m, BLOCK_M) programs cannot fill the device, the
r chunks are split over a third grid axis and the partial tiles are combined with
tl.atomic_add (fp32, so the summation order -- and the last bits -- vary run to run); the
launcher then zeroes out first (out.zero_()) when accumulate=False.  With
torch.use_deterministic_algorithms(True) the split is disabled.

The dense S tile wastes m/k of the tensor-core work (the sketch is a gather-scatter at heart),
but Triton has no shared-memory scatter-add, and global atomics per nonzero (N r k of them)
are far slower.  Roofline (typical: N = 1024, r = 1M bf16, m = 1024, k = 8, H100): reading g is
2 GB -> 0.6 ms at 3.35 TB/s; the dense-tile matmul is 2 N r m = 2.2e12 flops -> ~2.2 ms at
990 TFLOP/s (so compute-bound for m >~ 300); building S costs r m (#blocks per tile) compare-
selects per sample tile, amortised over BLOCK_N samples -- this, not the MMA, is the limit.
Measured (H100, CUDA graphs): 13.0 ms bf16 (a dense bf16 torch matmul of the same shape:
3.0 ms), 24.4 ms fp32 (MODE 2).

Configs (fixed, by size; CONFIG_OVERRIDE is a test / tuning hook): GPU: BLOCK_N = next pow2 of
N in [16, 256] (16-bit g; [16, 128] for fp32 g), BLOCK_M = next pow2 of m in [16, 128],
BLOCK_R = 64, TRANS, 8 warps, 2 stages (tuned on an H100 over BLOCK_N 64-256, BLOCK_R
32-128, BLOCK_M 64/128, both orientations).  Interpreter: BLOCK_N <= 64, BLOCK_M <= 64,
BLOCK_R = 32.
"""

import torch
import triton
import triton.language as tl

from ._hash import block_of_column, join_u64, mix64, sketch_entry, split_i64
from ._util import cdiv, check_grid, on_gpu, pow2_at_least, row_splits, wrap_triton


@triton.jit
def _sign_tile(seed_mixed, j, c0, m, k, DTYPE: tl.constexpr, BLOCK_R: tl.constexpr,
               BLOCK_M: tl.constexpr, TRANS: tl.constexpr):
    """Dense tile of sqrt(k) * S[j, c0:c0+BLOCK_M] (entries -1, 0, +1, exact in DTYPE):
    (BLOCK_R, BLOCK_M), or its transpose (BLOCK_M, BLOCK_R) when TRANS.

    j: (BLOCK_R,) uint64 global S rows; c0: int64 first column.  Only the blocks t that
    overlap [c0, min(c0 + BLOCK_M, m)) are hashed; columns >= m stay 0."""
    cols = c0 + tl.arange(0, BLOCK_M).to(tl.int64)
    c_last = tl.minimum(c0 + BLOCK_M, tl.cast(m, tl.int64)) - 1
    t_lo = block_of_column(c0, m, k)
    t_hi = block_of_column(c_last, m, k)
    if TRANS:
        s = tl.zeros((BLOCK_M, BLOCK_R), dtype=DTYPE)
    else:
        s = tl.zeros((BLOCK_R, BLOCK_M), dtype=DTYPE)
    for t in range(t_lo, t_hi + 1):
        col, sign = sketch_entry(seed_mixed, j, t, m, k)
        sign = sign.to(DTYPE)
        if TRANS:
            s = tl.where(cols[:, None] == col[None, :], sign[None, :], s)
        else:
            s = tl.where(col[:, None] == cols[None, :], sign[:, None], s)
    return s


@triton.jit
def _sign_tile_for(seed_mixed, j, c0, m, k, G_DTYPE: tl.constexpr, MODE: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, TRANS: tl.constexpr):
    """_sign_tile in the operand dtype of _dot_sign's MODE (g's own 16-bit dtype, fp32, bf16)."""
    if MODE == 0:
        s = _sign_tile(seed_mixed, j, c0, m, k, G_DTYPE, BLOCK_R, BLOCK_M, TRANS)
    elif MODE == 1:
        s = _sign_tile(seed_mixed, j, c0, m, k, tl.float32, BLOCK_R, BLOCK_M, TRANS)
    else:
        s = _sign_tile(seed_mixed, j, c0, m, k, tl.bfloat16, BLOCK_R, BLOCK_M, TRANS)
    return s


@triton.jit
def _dot_sign(acc, g, s, MODE: tl.constexpr, TRANS: tl.constexpr):
    """acc += g @ s (acc (BLOCK_N, BLOCK_M)), or acc += s @ g when TRANS (s (BLOCK_M, BLOCK_R),
    g (BLOCK_R, BLOCK_N), acc (BLOCK_M, BLOCK_N)); s is the +-1/0 tile of _sign_tile, so every
    product is exact and the accumulation is fp32 (see the module docstring for MODE)."""
    if MODE == 0:
        if TRANS:
            acc = tl.dot(s, g, acc)
        else:
            acc = tl.dot(g, s, acc)
    elif MODE == 1:
        if TRANS:
            acc = tl.dot(s, g.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(g.to(tl.float32), s, acc, input_precision="ieee")
    else:
        gf = g.to(tl.float32)
        hi = gf.to(tl.bfloat16, fp_downcast_rounding="rtz")  # toward zero: never inf
        r1 = gf - hi.to(tl.float32)
        mid = r1.to(tl.bfloat16, fp_downcast_rounding="rtz")
        lo = (r1 - mid.to(tl.float32)).to(tl.bfloat16)
        if TRANS:
            acc = tl.dot(s, lo, acc)
            acc = tl.dot(s, mid, acc)
            acc = tl.dot(s, hi, acc)
        else:
            acc = tl.dot(lo, s, acc)
            acc = tl.dot(mid, s, acc)
            acc = tl.dot(hi, s, acc)
    return acc


@triton.jit
def _inv_sqrt(k):
    return tl.div_rn(1.0, tl.sqrt_rn(tl.cast(k, tl.float32)))


@triton.jit
def _write_out(out_ptr, acc, offs_n, cols, N, m, ACCUMULATE: tl.constexpr, USE_ATOMIC: tl.constexpr,
               TRANS: tl.constexpr):
    """out[offs_n, cols] (=|+=) acc (acc indexed [n, c], or [c, n] when TRANS); atomics when
    several programs share the tile."""
    if TRANS:
        ptrs = out_ptr + offs_n[None, :] * m + cols[:, None]
        inside = (offs_n < N)[None, :] & (cols < m)[:, None]
    else:
        ptrs = out_ptr + offs_n[:, None] * m + cols[None, :]
        inside = (offs_n < N)[:, None] & (cols < m)[None, :]
    if USE_ATOMIC:
        tl.atomic_add(ptrs, acc, mask=inside, sem="relaxed")
    elif ACCUMULATE:
        tl.store(ptrs, tl.load(ptrs, mask=inside, other=0.0) + acc, mask=inside)
    else:
        tl.store(ptrs, acc, mask=inside)


@triton.jit
def _sparse_sign_sketch_kernel(out_ptr, g_ptr, N, r, ldg, m, k, seed_hi, seed_lo, offset_hi,
                               offset_lo, chunks_per_split,
                               ACCUMULATE: tl.constexpr, USE_ATOMIC: tl.constexpr,
                               MODE: tl.constexpr, TRANS: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_R: tl.constexpr):
    # axis 0 numbers (sample tile, column tile) pairs, sample tiles fastest: a grid axis 1 / 2
    # holds at most 65535 programs, fewer than the column tiles of m > 8.4M at BLOCK_M = 128
    pid = tl.program_id(0).to(tl.int64)
    grid_n = tl.cdiv(tl.cast(N, tl.int64), BLOCK_N)
    pid_n = pid % grid_n
    pid_m = pid // grid_n
    pid_s = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    c0 = pid_m * BLOCK_M
    cols = c0 + tl.arange(0, BLOCK_M).to(tl.int64)
    seed_mixed = mix64(join_u64(seed_hi, seed_lo))
    offset_u = join_u64(offset_hi, offset_lo)
    r64 = tl.cast(r, tl.int64)
    n_ok = offs_n < N

    r_begin = pid_s * tl.cast(chunks_per_split, tl.int64) * BLOCK_R
    r_end = tl.minimum(r_begin + tl.cast(chunks_per_split, tl.int64) * BLOCK_R, r64)
    if TRANS:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for r0 in range(r_begin, r_end, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        r_ok = offs_r < r64
        if TRANS:
            g = tl.load(g_ptr + offs_n[None, :] * ldg + offs_r[:, None],
                        mask=n_ok[None, :] & r_ok[:, None], other=0.0)
        else:
            g = tl.load(g_ptr + offs_n[:, None] * ldg + offs_r[None, :],
                        mask=n_ok[:, None] & r_ok[None, :], other=0.0)
        j = offset_u + offs_r.to(tl.uint64, bitcast=True)
        s = _sign_tile_for(seed_mixed, j, c0, m, k, g_ptr.dtype.element_ty, MODE, BLOCK_R, BLOCK_M, TRANS)
        acc = _dot_sign(acc, g, s, MODE, TRANS)
    acc = acc * _inv_sqrt(k)
    _write_out(out_ptr, acc, offs_n, cols, N, m, ACCUMULATE, USE_ATOMIC, TRANS)


def dot_mode(t, dtype):
    """MODE of _dot_sign for an operand of `dtype` on the device of tensor t."""
    if dtype != torch.float32:
        return 0
    return 2 if on_gpu(t) else 1


# Test / tuning hook: keys BLOCK_N, BLOCK_M, BLOCK_R, TRANS, num_warps, num_stages.
CONFIG_OVERRIDE = {}


def sketch_config(N, m, mode, gpu):
    """Fixed tile config by size (see the module docstring)."""
    if gpu:
        # 16-bit g: 256 samples per tile amortise building the S tile; fp32 g (three bf16
        # operands for the exact split) keeps 128 to stay within shared memory
        cfg = dict(BLOCK_N=pow2_at_least(N, 16, 256 if mode == 0 else 128),
                   BLOCK_M=pow2_at_least(m, 16, 128), BLOCK_R=64, TRANS=True, num_warps=8,
                   num_stages=2)
    else:  # interpreter: small tiles, plain orientation
        cfg = dict(BLOCK_N=pow2_at_least(N, 16, 64), BLOCK_M=pow2_at_least(m, 16, 64),
                   BLOCK_R=32, TRANS=False, num_warps=4, num_stages=2)
    cfg.update(CONFIG_OVERRIDE)
    return cfg


def launch_sparse_sign_sketch(out, g, m: int, k: int, seed: int, offset: int, accumulate: bool):
    """out (N, m) fp32 contiguous (=|+=) g (N, r) @ S; g contiguous fp32/fp16/bf16.

    May call out.zero_() first (accumulate=False with the row split: partial tiles are then
    combined with atomics)."""
    N, r = g.shape
    if N == 0:
        return
    mode = dot_mode(g, g.dtype)
    cfg = sketch_config(N, m, mode, on_gpu(g))
    grid_n, grid_m = cdiv(N, cfg["BLOCK_N"]), cdiv(m, cfg["BLOCK_M"])
    splits, per = row_splits(grid_n * grid_m, cdiv(r, cfg["BLOCK_R"]), g.device)
    use_atomic = splits > 1
    if use_atomic and not accumulate:
        out.zero_()
    wrap_triton(_sparse_sign_sketch_kernel)[(check_grid(grid_n * grid_m), splits)](
        out, g, N, r, g.stride(0), m, k, *split_i64(seed), *split_i64(offset), per,
        ACCUMULATE=bool(accumulate), USE_ATOMIC=use_atomic, MODE=mode, **cfg)
