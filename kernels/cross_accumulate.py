"""cross_accumulate: c (d_in x d_out) += alpha * sum_{t : mask[t]} x[t]^T y[t]   (in place).

Math / contract (docs/native_abi.md, "cross_accumulate"):
  c (d_in, d_out) float32 or float64, row stride ldc (contiguous here);
  x (T, d_in), y (T, d_out): same dtype, float32 / float16 / bfloat16, column stride 1;
  mask None or bool (T,): rows with mask False are skipped (both operands load 0 there).
  Precision as cov_accumulate: fp32 c -> fp32 accumulation of exact products (fp32 inputs
  with input_precision="ieee"); fp64 c -> fp64 accumulation of upcast inputs.  T == 0 no-op.

Kernel: grid (output tiles, T splits): axis 0 enumerates the (BLOCK_I x BLOCK_J) tiles of c;
each program streams over its rows of T with the tile helper shared with cov_accumulate
(cov_accumulate._xty_tile), then c[I, J] += alpha * acc (one read-modify-write per element, one
writer per element: deterministic).  Axis 1 splits T (partial sums combined with
tl.atomic_add, order not fixed) only when the tiles cannot fill the device and deterministic
algorithms are not requested.  Configs: cov_accumulate.tile_config (128 x 128 x 64 for 16-bit
inputs, 64 x 64 x 16 for fp32, 64 x 64 with fp64 FMAs for fp64 c; shrunk to the next power of
two >= the dim, minimum 16).

Roofline (typical: d_in = d_out = 4096, T = 8192 bf16): 2 T d_in d_out = 2.7e11 flops, ~0.28 ms
at ~990 TFLOP/s dense bf16 (H100); x / y panels are re-read per output tile from L2
(~2 GB of L2 traffic), c read + write 2 * 64 MB of HBM -> compute bound.  Measured (H100,
CUDA graphs): 486 us (~565 TFLOP/s).
"""

import torch
import triton
import triton.language as tl

from ._util import alpha_exact, cdiv, split_f64, wrap_triton
from .cov_accumulate import _join_f64, _t_range, _xty_tile, t_splits, tile_config


@triton.jit
def _cross_accumulate_kernel(c_ptr, x_ptr, y_ptr, mask_ptr, d_in, d_out, T, ldc, ldx, ldy,
                             alpha1, alpha2, alpha3, rows_per_split,
                             HAS_MASK: tl.constexpr, ACC_F64: tl.constexpr, IEEE: tl.constexpr,
                             SPLIT_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
                             BLOCK_T: tl.constexpr):
    n_tiles_j = tl.cdiv(d_out, BLOCK_J)
    pid = tl.program_id(0).to(tl.int64)
    offs_i = (pid // n_tiles_j) * BLOCK_I + tl.arange(0, BLOCK_I).to(tl.int64)
    offs_j = (pid % n_tiles_j) * BLOCK_J + tl.arange(0, BLOCK_J).to(tl.int64)
    t_begin, t_end = _t_range(T, rows_per_split)
    acc = _xty_tile(x_ptr, y_ptr, mask_ptr, t_begin, t_end, ldx, ldy, offs_i, offs_j, d_in, d_out,
                    HAS_MASK, ACC_F64, IEEE, BLOCK_I, BLOCK_J, BLOCK_T)
    alpha = _join_f64(alpha1, alpha2, alpha3)
    if ACC_F64:
        v = alpha * acc
    else:
        v = alpha.to(tl.float32) * acc
    inside = (offs_i < d_in)[:, None] & (offs_j < d_out)[None, :]
    ptrs = c_ptr + offs_i[:, None] * ldc + offs_j[None, :]
    if SPLIT_T:
        tl.atomic_add(ptrs, v, mask=inside, sem="relaxed")
    else:
        tl.store(ptrs, tl.load(ptrs, mask=inside, other=0.0) + v, mask=inside)


def launch_cross_accumulate(c, x, y, alpha: float, mask):
    """c (d_in, d_out) fp32/fp64 contiguous += alpha * x^T y over rows with mask True.

    x (T, d_in), y (T, d_out) contiguous, same dtype (fp32/fp16/bf16); mask None or bool (T,).
    Small outputs with long T split T over a second grid axis (fp32/fp64 atomics into c)."""
    T, d_in = x.shape
    d_out = y.shape[1]
    if T == 0 or d_in == 0 or d_out == 0:
        return
    if not alpha_exact(alpha):   # |alpha| beyond the fp32 parts' range: scale outside the kernel
        part = torch.zeros_like(c)
        launch_cross_accumulate(part, x, y, 1.0, mask)
        c.copy_(c.double().add_(part.double(), alpha=alpha))   # float64: alpha may exceed float32's range
        return
    acc_f64 = c.dtype == torch.float64
    block, block_t, warps, stages = tile_config(max(d_in, d_out), x.dtype, acc_f64)
    block_i = min(block, tile_config(d_in, x.dtype, acc_f64)[0])
    block_j = min(block, tile_config(d_out, x.dtype, acc_f64)[0])
    tiles = cdiv(d_in, block_i) * cdiv(d_out, block_j)
    splits, rows = t_splits(tiles, T, block_t, x.device)
    has_mask = mask is not None
    wrap_triton(_cross_accumulate_kernel)[(tiles, splits)](
        c, x, y, mask if has_mask else x, d_in, d_out, T, c.stride(0), x.stride(0), y.stride(0),
        *split_f64(alpha), rows,
        HAS_MASK=has_mask, ACC_F64=acc_f64, IEEE=x.dtype == torch.float32, SPLIT_T=splits > 1,
        BLOCK_I=block_i, BLOCK_J=block_j, BLOCK_T=block_t, num_warps=warps, num_stages=stages)
