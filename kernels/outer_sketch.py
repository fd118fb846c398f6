"""outer_sketch: out[n] (=|+=) vec(G_n) @ S with G_n = sum_t d[n, t]^T a[n, t] (d_out x d_in).

Math / contract (docs/native_abi.md, "outer_sketch"):
  a (N, T, d_in), d (N, T, d_out): same dtype (fp32 / fp16 / bf16), contiguous here (strides
  lda_n, lda_t, 1 and ldd_n, ldd_t, 1 are passed); out (N, m) float32 contiguous.
  G_n[o, q] = sum_t d[n, t, o] * a[n, t, q] is flattened row-major, so G_n[o, q] meets the
  global S row j = offset + o * d_in + q (uint64), r = d_out * d_in; S as in
  sparse_sign_sketch (csrc/common/sketch_hash.h).  fp32 accumulation throughout.
  accumulate=False writes every element (zeros when T, d_in or d_out is 0); True adds.

Kernel: program (sample tile BLOCK_N, column tile BLOCK_M, split s of the row chunks), the
same structure as sparse_sign_sketch, with the g tile produced on the fly instead of loaded:
for a chunk of BLOCK_R consecutive rows jl of vec(G) (o = jl // d_in, q = jl % d_in) the
program forms g[n, jl] = sum_t d[n,t,o] * a[n,t,q] in fp32 registers by FMAs over t on
gathered loads (each d value is reused along q and stays in L1; a loads are contiguous), then
builds the +-1 S tile of those rows for its column tile (sparse_sign_sketch._sign_tile_for) and
accumulates with the fp32 G exactly (sparse_sign_sketch._dot_sign: ieee under the interpreter,
exact 3-way bf16 split on a GPU; transposed orientation on a GPU).  G is never materialised
beyond one (BLOCK_N x BLOCK_R) register tile.  1/sqrt(k) at the end; the same row split with
fp32 atomics as sparse_sign_sketch when the (N, m) grid is too small (out.zero_() first for
accumulate=False).
An alternative path (T_DOT, opt-in through CONFIG_OVERRIDE only) forms (BLOCK_O x BLOCK_Q) tiles
of G with a batched tl.dot over T; it measured ~10x slower on an H100 (0.4 TFLOP/s at N = 64,
T = 128, 512 x 512, m = 1024: 104 ms vs 11.3 ms for the FMA path) and is kept only for
experiments.

Cost: G is recomputed for every column tile (m / BLOCK_M times): 2 N T r m / BLOCK_M FMA-path
flops for G plus 2 N r m tensor-core flops for the sketch -- negligible for T = 1 (the plain
Linear case), dominant for long T (T >~ 16).  Roofline (typical: N = 256, T = 1,
d_in = d_out = 1024 (r = 1M), m = 1024, bf16, H100): 2 N r m = 5.5e11 flops -> ~0.6 ms of
dense bf16 tensor-core time, x3 for the exact fp32 split of G (~1.7 ms); inputs are only
N T (d_in + d_out) elements (1 MB) and out is 1 MB, so it is compute bound.  Measured (H100,
CUDA graphs): 9.2 ms (N = 256, T = 1, 1024 x 1024, m = 1024); 11.3 ms (N = 64, T = 128,
512 x 512, m = 1024); 142 us (N = 1024, T = 1, 768 x 10, m = 512).

Configs (fixed, by size; CONFIG_OVERRIDE is a test / tuning hook): GPU: BLOCK_N = next pow2
of N in [16, 128], BLOCK_M = next pow2 of m in [16, 128], BLOCK_R = 64, TRANS, 8 warps,
2 stages; interpreter: BLOCK_N, BLOCK_M <= 64, BLOCK_R = 32.
"""

import torch
import triton
import triton.language as tl

from ._hash import join_u64, mix64, split_i64
from ._util import cdiv, check_grid, on_gpu, pow2_at_least, row_splits, wrap_triton
from .sparse_sign_sketch import _dot_sign, _inv_sqrt, _sign_tile_for, _write_out, dot_mode


@triton.jit
def _outer_sketch_kernel(out_ptr, a_ptr, d_ptr, N, T, d_in, d_out, lda_n, lda_t, ldd_n, ldd_t,
                         m, k, seed_hi, seed_lo, offset_hi, offset_lo, n_q_tiles, n_chunks,
                         chunks_per_split,
                         ACCUMULATE: tl.constexpr, USE_ATOMIC: tl.constexpr,
                         T_DOT: tl.constexpr, IEEE: tl.constexpr, MODE: tl.constexpr,
                         TRANS: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
                         BLOCK_O: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr):
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
    d_in64 = tl.cast(d_in, tl.int64)
    r64 = d_in64 * tl.cast(d_out, tl.int64)
    n_ok = offs_n < N

    c_begin = pid_s * tl.cast(chunks_per_split, tl.int64)
    c_end = tl.minimum(c_begin + tl.cast(chunks_per_split, tl.int64), tl.cast(n_chunks, tl.int64))
    if TRANS:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for chunk in range(c_begin, c_end):
        if T_DOT:
            # a (BLOCK_O x BLOCK_Q) tile of G for BLOCK_N samples, by a batched dot over T
            o0 = (chunk // n_q_tiles) * BLOCK_O
            q0 = (chunk % n_q_tiles) * BLOCK_Q
            offs_o = o0 + tl.arange(0, BLOCK_O).to(tl.int64)
            offs_q = q0 + tl.arange(0, BLOCK_Q).to(tl.int64)
            o_ok = offs_o < d_out
            q_ok = offs_q < d_in
            n3 = offs_n[:, None, None]
            g3 = tl.zeros((BLOCK_N, BLOCK_O, BLOCK_Q), dtype=tl.float32)
            for t0 in range(0, T, BLOCK_T):
                offs_t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
                t_ok = offs_t < T
                # d^T block (BLOCK_N, BLOCK_O, BLOCK_T) and a block (BLOCK_N, BLOCK_T, BLOCK_Q)
                dt = tl.load(d_ptr + n3 * ldd_n + offs_t[None, None, :] * ldd_t + offs_o[None, :, None],
                             mask=n_ok[:, None, None] & o_ok[None, :, None] & t_ok[None, None, :],
                             other=0.0)
                at = tl.load(a_ptr + n3 * lda_n + offs_t[None, :, None] * lda_t + offs_q[None, None, :],
                             mask=n_ok[:, None, None] & t_ok[None, :, None] & q_ok[None, None, :],
                             other=0.0)
                if IEEE:
                    g3 = tl.dot(dt, at, g3, input_precision="ieee")
                else:
                    g3 = tl.dot(dt, at, g3)
            g = tl.reshape(g3, (BLOCK_N, BLOCK_O * BLOCK_Q))
            # row r_loc of the chunk is G[o0 + r_loc // BLOCK_Q, q0 + r_loc % BLOCK_Q]
            r_loc = tl.arange(0, BLOCK_O * BLOCK_Q).to(tl.int64)
            jl = (o0 + r_loc // BLOCK_Q) * d_in64 + (q0 + r_loc % BLOCK_Q)
        else:
            # BLOCK_R consecutive rows of vec(G): element (n, jl) = sum_t d[n,t,o] a[n,t,q] with
            # o = jl // d_in, q = jl % d_in, as fp32 FMAs on gathered (cached) loads
            jl = chunk * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
            j_ok = jl < r64
            o = jl // d_in64
            q = jl % d_in64
            if TRANS:
                g = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
                ok = j_ok[:, None] & n_ok[None, :]
                d_off = offs_n[None, :] * ldd_n + o[:, None]
                a_off = offs_n[None, :] * lda_n + q[:, None]
            else:
                g = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
                ok = n_ok[:, None] & j_ok[None, :]
                d_off = offs_n[:, None] * ldd_n + o[None, :]
                a_off = offs_n[:, None] * lda_n + q[None, :]
            for t in range(0, T):
                t64 = tl.cast(t, tl.int64)
                dv = tl.load(d_ptr + d_off + t64 * ldd_t, mask=ok, other=0.0).to(tl.float32)
                av = tl.load(a_ptr + a_off + t64 * lda_t, mask=ok, other=0.0).to(tl.float32)
                g += dv * av
        j = offset_u + jl.to(tl.uint64, bitcast=True)
        s = _sign_tile_for(seed_mixed, j, c0, m, k, tl.float32, MODE, BLOCK_R, BLOCK_M, TRANS)
        acc = _dot_sign(acc, g, s, MODE, TRANS)
    acc = acc * _inv_sqrt(k)
    _write_out(out_ptr, acc, offs_n, cols, N, m, ACCUMULATE, USE_ATOMIC, TRANS)


# Test / tuning hook: keys of outer_config's dict.
CONFIG_OVERRIDE = {}


def outer_config(N, T, d_in, d_out, m, mode, gpu):
    """Fixed tile config by size (see the module docstring)."""
    # The batched-dot path for G (T_DOT) measured far slower on an H100 (0.4 TFLOP/s at
    # N=64, T=128, 512x512, m=1024) than the FMA path, so it is opt-in only
    # (CONFIG_OVERRIDE["T_DOT"] = True); the FMA path serves every T.
    t_dot = CONFIG_OVERRIDE.get("T_DOT", False)
    if t_dot:
        block_q = pow2_at_least(d_in, 16, 32)
        block_o = max(16, pow2_at_least(d_out, 1, 256 // block_q))
        cfg = dict(T_DOT=True, TRANS=False, BLOCK_N=pow2_at_least(N, 16, 32),
                   BLOCK_M=pow2_at_least(m, 16, 64), BLOCK_O=block_o, BLOCK_Q=block_q,
                   BLOCK_R=block_o * block_q, BLOCK_T=16, num_warps=4, num_stages=2)
    else:
        cfg = dict(T_DOT=False, TRANS=gpu, BLOCK_N=pow2_at_least(N, 16, 128 if gpu else 64),
                   BLOCK_M=pow2_at_least(m, 16, 128 if gpu else 64), BLOCK_R=64 if gpu else 32,
                   BLOCK_O=1, BLOCK_Q=1, BLOCK_T=1, num_warps=8 if gpu else 4, num_stages=2)
    cfg.update(CONFIG_OVERRIDE)
    return cfg


def launch_outer_sketch(out, a, d, m: int, k: int, seed: int, offset: int, accumulate: bool):
    """out (N, m) fp32 contiguous (=|+=) sketch of G_n = sum_t d[n,t]^T a[n,t], flattened
    row-major (row offset + o * d_in + q).  a (N, T, d_in), d (N, T, d_out) contiguous, same
    dtype.  May call out.zero_() first (accumulate=False with the row split)."""
    N, T, d_in = a.shape
    d_out = d.shape[2]
    if N == 0:
        return
    mode = dot_mode(a, torch.float32)
    cfg = outer_config(N, T, d_in, d_out, m, mode, on_gpu(a))
    if cfg["T_DOT"]:
        n_q_tiles = cdiv(d_in, cfg["BLOCK_Q"])
        n_chunks = cdiv(d_out, cfg["BLOCK_O"]) * n_q_tiles
    else:
        n_q_tiles = 1
        n_chunks = cdiv(d_out * d_in, cfg["BLOCK_R"]) if T > 0 else 0
    grid_n, grid_m = cdiv(N, cfg["BLOCK_N"]), cdiv(m, cfg["BLOCK_M"])
    splits, per = row_splits(grid_n * grid_m, n_chunks, a.device)
    use_atomic = splits > 1
    if use_atomic and not accumulate:
        out.zero_()
    wrap_triton(_outer_sketch_kernel)[(check_grid(grid_n * grid_m), splits)](
        out, a, d, N, T, d_in, d_out, a.stride(0), a.stride(1), d.stride(0), d.stride(1),
        m, k, *split_i64(seed), *split_i64(offset), n_q_tiles, n_chunks, per,
        ACCUMULATE=bool(accumulate), USE_ATOMIC=use_atomic,
        IEEE=a.dtype == torch.float32, MODE=mode, **cfg)
