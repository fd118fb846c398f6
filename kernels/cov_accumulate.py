"""cov_accumulate: sigma (d x d) += alpha * sum_{t : mask[t]} x[t]^T x[t]   (in place).

Math / contract (docs/native_abi.md, "cov_accumulate"):
  sigma   (d, d) float32 or float64, row stride ld_sigma, column stride 1 (contiguous here);
  x       (T, d) float32 / float16 / bfloat16, row stride ldx, column stride 1;
  mask    None or bool (T,): rows with mask False are skipped (their loads are masked to 0,
          so NaN/Inf in skipped rows never reach sigma).
  Only the upper triangle is computed: value v[i, j] for i <= j, then
  sigma[i, j] += alpha * v[i, j] and the mirror sigma[j, i] = sigma[i, j] (the *updated* upper
  value), so sigma is exactly symmetric afterwards.  T == 0 (or d == 0) is a no-op.
  Precision: float32 sigma -> fp32 accumulation of exact products (tl.dot with fp32
  accumulators; fp32 x uses input_precision="ieee", i.e. no TF32); float64 sigma -> x is upcast
  to fp64 and accumulated in fp64 (rank-1 fp64 FMA updates: Triton's tl.dot does not take
  fp64 operands on NVIDIA), alpha applied in fp64 (passed as three fp32 parts, _util.split_f64).

Kernel: grid (tile pairs, T splits).  Axis 0: one program per upper-triangular tile pair
(bi <= bj) of BLOCK x BLOCK tiles; the program id p is inverted as p = bj (bj + 1) / 2 + bi.
The program streams over its rows of x in BLOCK_T steps (x loaded as (BLOCK_T, BLOCK) tiles for
rows I and columns J, the I tile transposed into tl.dot), then reads sigma[I, J], adds
alpha * acc and writes the tile to (I, J) and its transpose to (J, I).  In a diagonal tile only
entries with i <= j are stored at (i, j) and entries with i < j at (j, i), so each element of
sigma is written by exactly one program, once.  The tile code (_xty_tile) is shared with
cross_accumulate.
Axis 1 (only when the tile pairs cannot fill the device -- small d, long T -- and
torch.are_deterministic_algorithms_enabled() is False): T is split into slices whose partial
sums are added to the upper triangle with tl.atomic_add (summation order, hence the last bits,
vary run to run), then a second launch (_cov_mirror_kernel) copies the upper triangle onto
the lower one, so sigma is still exactly symmetric.

Configs (fixed, by size and dtype; no autotuning; CONFIG_OVERRIDE is a test / tuning hook):
  16-bit x, fp32 sigma : BLOCK 128, BLOCK_T 64, 4 warps, 4 stages (tensor cores);
  fp32 x,  fp32 sigma  : BLOCK 64,  BLOCK_T 16, 4 warps, 2 stages (ieee dot = FMA path);
  fp64 sigma           : BLOCK 64, 4 warps, rank-1 fp64 FMA updates, 4 rows unrolled per step;
  BLOCK shrinks to the next power of two >= d (minimum 16, tl.dot's minimum tile).

Roofline (typical: d = 4096, T = 8192 bf16 tokens, fp32 sigma): T d^2 = 2.7e11 flops for the
upper triangle (half of the full 2 T d^2); ~0.28 ms at ~990 TFLOP/s dense bf16 (H100).
Traffic: each tile pair rereads its two (T x 128) x panels: (d/128)^2 / 2 * 2 * T * 128 * 2 B
= 1.1 GB, mostly from L2, plus sigma read + write 2 * 64 MB -> compute / L2 bound.
Measured (H100, CUDA graphs): 344 us (torch's full x.T @ x: 350 us); fp32 x: 3.6 ms
(~38 TFLOP/s, no TF32; torch fp32 x.T @ x: 5.2 ms); d = 256, T = 65536 bf16 with the T split:
65 us (torch full: 26 us).  fp64 sigma runs on the fp64 FMA units (~1/15 of the bf16 rate at
best; measured 4.8 ms for d = 1024, T = 8192 before the 4-row unrolling, not re-measured).
"""

import torch
import triton
import triton.language as tl

from ._util import alpha_exact, cdiv, pow2_at_least, row_splits, split_f64, wrap_triton


@triton.jit
def _join_f64(a1, a2, a3):
    """alpha in fp64 from the three fp32 parts of _util.split_f64 (exact)."""
    return (tl.cast(a1, tl.float64) + tl.cast(a2, tl.float64)) + tl.cast(a3, tl.float64)


@triton.jit
def _xty_tile(x_ptr, y_ptr, mask_ptr, t_begin, t_end, ldx, ldy, offs_i, offs_j, d_i, d_j,
              HAS_MASK: tl.constexpr, ACC_F64: tl.constexpr, IEEE: tl.constexpr,
              BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_T: tl.constexpr):
    """acc[a, b] = sum_{t_begin <= t < t_end, mask[t]} x[t, offs_i[a]] * y[t, offs_j[b]].

    The tile code shared by cov_accumulate and cross_accumulate: fp32 accumulation with
    tl.dot (input_precision="ieee" when IEEE), or fp64 FMAs when ACC_F64.  Out-of-range
    columns and masked / out-of-range rows contribute exact zeros (both operands are zeroed,
    so NaN/Inf in skipped rows never enter a product)."""
    col_i = offs_i < d_i
    col_j = offs_j < d_j
    if ACC_F64:
        # fp64: rank-1 updates with fp64 FMAs, BLOCK_T rows per step (unrolled so that their
        # loads are in flight together); tl.dot has no fp64 path on NVIDIA targets.
        acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float64)
        for t0 in range(t_begin, t_end, BLOCK_T):
            for u in tl.static_range(BLOCK_T):
                # row t0 + u, clamped into the range (a tail row past t_end reloads the last
                # row and is then zeroed): no scalar load masks needed
                t64 = tl.minimum(tl.cast(t0, tl.int64) + u, t_end - 1)
                ok = tl.cast(t0, tl.int64) + u < t_end
                xi = tl.load(x_ptr + t64 * ldx + offs_i, mask=col_i, other=0.0).to(tl.float64)
                yj = tl.load(y_ptr + t64 * ldy + offs_j, mask=col_j, other=0.0).to(tl.float64)
                if HAS_MASK:
                    ok = ok & (tl.load(mask_ptr + t64).to(tl.int32) != 0)
                xi = tl.where(ok, xi, 0.0)
                yj = tl.where(ok, yj, 0.0)
                acc += xi[:, None] * yj[None, :]
    else:
        acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
        for t0 in range(t_begin, t_end, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
            row_ok = offs_t < t_end
            if HAS_MASK:
                keep = tl.load(mask_ptr + offs_t, mask=row_ok, other=0)
                row_ok = row_ok & (keep != 0)
            xt = tl.load(x_ptr + offs_t[:, None] * ldx + offs_i[None, :],
                         mask=row_ok[:, None] & col_i[None, :], other=0.0)   # (BLOCK_T, BLOCK_I)
            yt = tl.load(y_ptr + offs_t[:, None] * ldy + offs_j[None, :],
                         mask=row_ok[:, None] & col_j[None, :], other=0.0)   # (BLOCK_T, BLOCK_J)
            xa = tl.trans(xt)                                                # (BLOCK_I, BLOCK_T)
            if IEEE:
                acc = tl.dot(xa, yt, acc, input_precision="ieee")
            else:
                acc = tl.dot(xa, yt, acc)
    return acc


@triton.jit
def _t_range(T, rows_per_split):
    """[t_begin, t_end) of this program's split (grid axis 1) of the T rows."""
    t_begin = tl.program_id(1).to(tl.int64) * tl.cast(rows_per_split, tl.int64)
    t_end = tl.minimum(t_begin + tl.cast(rows_per_split, tl.int64), tl.cast(T, tl.int64))
    return t_begin, t_end


@triton.jit
def _tile_pair(BLOCK: tl.constexpr):
    """Upper-triangular tile pair (bi <= bj) of program p = bj (bj + 1) / 2 + bi (axis 0), as
    the row / column offsets of the tile."""
    pid = tl.program_id(0).to(tl.int64)
    bj = ((tl.sqrt((8 * pid + 1).to(tl.float64)) - 1.0) * 0.5).to(tl.int64)
    bj = tl.where(bj * (bj + 1) // 2 > pid, bj - 1, bj)   # fix the sqrt's rounding
    bj = tl.where((bj + 1) * (bj + 2) // 2 <= pid, bj + 1, bj)
    bi = pid - bj * (bj + 1) // 2
    offs_i = bi * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    offs_j = bj * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    return offs_i, offs_j


@triton.jit
def _cov_accumulate_kernel(sigma_ptr, x_ptr, mask_ptr, d, T, ld_sigma, ldx, alpha1, alpha2, alpha3,
                           rows_per_split,
                           HAS_MASK: tl.constexpr, ACC_F64: tl.constexpr, IEEE: tl.constexpr,
                           SPLIT_T: tl.constexpr, BLOCK: tl.constexpr, BLOCK_T: tl.constexpr):
    offs_i, offs_j = _tile_pair(BLOCK)
    t_begin, t_end = _t_range(T, rows_per_split)
    acc = _xty_tile(x_ptr, x_ptr, mask_ptr, t_begin, t_end, ldx, ldx, offs_i, offs_j, d, d,
                    HAS_MASK, ACC_F64, IEEE, BLOCK, BLOCK, BLOCK_T)
    alpha = _join_f64(alpha1, alpha2, alpha3)
    if ACC_F64:
        v = alpha * acc
    else:
        v = alpha.to(tl.float32) * acc

    inside = (offs_i < d)[:, None] & (offs_j < d)[None, :]
    upper = inside & (offs_i[:, None] <= offs_j[None, :])
    up_ptrs = sigma_ptr + offs_i[:, None] * ld_sigma + offs_j[None, :]
    if SPLIT_T:
        # partial sums over a slice of T: combined in the upper triangle with atomics; the
        # mirror is written afterwards by _cov_mirror_kernel
        tl.atomic_add(up_ptrs, v, mask=upper, sem="relaxed")
    else:
        v = tl.load(up_ptrs, mask=upper, other=0.0) + v
        tl.store(up_ptrs, v, mask=upper)
        # mirror: element (i, j) of v goes to sigma[j, i]; stored as the transposed tile so
        # that consecutive threads write consecutive addresses
        strictly = inside & (offs_i[:, None] < offs_j[None, :])
        lo_ptrs = sigma_ptr + offs_j[:, None] * ld_sigma + offs_i[None, :]
        tl.store(lo_ptrs, tl.trans(v), mask=tl.trans(strictly))


@triton.jit
def _cov_mirror_kernel(sigma_ptr, d, ld_sigma, BLOCK: tl.constexpr):
    """sigma[j, i] = sigma[i, j] for i < j (after a split-T accumulation)."""
    offs_i, offs_j = _tile_pair(BLOCK)
    inside = (offs_i < d)[:, None] & (offs_j < d)[None, :]
    strictly = inside & (offs_i[:, None] < offs_j[None, :])
    v = tl.load(sigma_ptr + offs_i[:, None] * ld_sigma + offs_j[None, :], mask=strictly, other=0.0)
    tl.store(sigma_ptr + offs_j[:, None] * ld_sigma + offs_i[None, :], tl.trans(v),
             mask=tl.trans(strictly))


# Test / tuning hook: keys BLOCK, BLOCK_T, num_warps, num_stages, SPLIT (force a split count).
CONFIG_OVERRIDE = {}


def tile_config(d_max, x_dtype, acc_f64):
    """(BLOCK, BLOCK_T, num_warps, num_stages) for the x^T y tiles, by dtype and size."""
    if acc_f64:
        block, block_t, warps, stages = 64, 4, 4, 2
    elif x_dtype == torch.float32:
        block, block_t, warps, stages = 64, 16, 4, 2
    else:
        block, block_t, warps, stages = 128, 64, 4, 4
    block = pow2_at_least(d_max, 16, block)
    if block <= 32:
        warps = min(warps, 4)
    o = CONFIG_OVERRIDE
    return (o.get("BLOCK", block), o.get("BLOCK_T", block_t), o.get("num_warps", warps),
            o.get("num_stages", stages))


def t_splits(programs, T, block_t, device):
    """(splits, rows per split) of the T axis: see _util.row_splits."""
    if "SPLIT" in CONFIG_OVERRIDE:
        per = cdiv(cdiv(T, block_t), CONFIG_OVERRIDE["SPLIT"])
        return cdiv(cdiv(T, block_t), per), per * block_t
    splits, per = row_splits(programs, cdiv(T, block_t), device)
    return splits, per * block_t


def launch_cov_accumulate(sigma, x, alpha: float, mask):
    """sigma (d, d) fp32/fp64 contiguous += alpha * x^T x over rows with mask True (in place).

    x (T, d) fp32/fp16/bf16 contiguous; mask None or bool (T,) contiguous.  Small d with long
    T splits T over a second grid axis (atomics into the upper triangle, then a second launch
    writes the mirror)."""
    T, d = x.shape
    if T == 0 or d == 0:
        return
    if not alpha_exact(alpha):   # |alpha| beyond the fp32 parts' range: scale outside the kernel
        part = torch.zeros_like(sigma)
        launch_cov_accumulate(part, x, 1.0, mask)
        # in float64 (alpha may be beyond float32's range), rounded once into sigma's dtype
        upper = torch.triu(sigma.double()).add_(torch.triu(part.double()), alpha=alpha)
        sigma.copy_(upper + torch.triu(upper, 1).T)   # the upper triangle, mirrored, as the kernel writes
        return
    acc_f64 = sigma.dtype == torch.float64
    block, block_t, warps, stages = tile_config(d, x.dtype, acc_f64)
    nb = cdiv(d, block)
    pairs = nb * (nb + 1) // 2
    splits, rows = t_splits(pairs, T, block_t, x.device)
    has_mask = mask is not None
    wrap_triton(_cov_accumulate_kernel)[(pairs, splits)](
        sigma, x, mask if has_mask else x, d, T, sigma.stride(0), x.stride(0), *split_f64(alpha),
        rows, HAS_MASK=has_mask, ACC_F64=acc_f64, IEEE=x.dtype == torch.float32,
        SPLIT_T=splits > 1, BLOCK=block, BLOCK_T=block_t, num_warps=warps, num_stages=stages)
    if splits > 1:
        wrap_triton(_cov_mirror_kernel)[(pairs,)](
            sigma, d, sigma.stride(0), BLOCK=block, num_warps=4)
