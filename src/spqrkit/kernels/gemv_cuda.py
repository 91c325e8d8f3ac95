"""The decode kernel "gemv_cuda": gemv_pairs' arithmetic as CUDA C++, compiled at run time by NVRTC (GPU only).

An experiment, not selected by `select_matmul`: whether hand-written CUDA reaches more of the memory bandwidth at
batch 1 than the Triton kernel gemv_pairs (issue 4's 80% target). It does not: on an H200 (2026-11-27, kernel_ab.py,
3 interleaved rounds, eight LLaMA-2 shapes) its best configuration (4 rows x 128 threads, loads one chunk ahead, 64
registers) ran at 0.85x-0.95x gemv_pairs' speed; shared-memory stages by bulk copies (cp.async.bulk + mbarrier),
1-8 rows, 32-128 threads, 1-3 stages: 0.53x-0.93x. Nsight Compute at 28672x8192 shows why: offline this kernel's
main loop is 3.1 instructions per weight against gemv_pairs' 4.1, but it EXECUTES as many (30.5M warp instructions
against 31.7M: a thread's two chunks carry its prologue, outliers and reduction), with more waiting on loads
(long scoreboard 7.0 against 4.8 cycles per issue) at the same 50% occupancy and DRAM throughput 48% against 51%.
Results: benchmarks/results/ab_gemv_cuda_v*_b1_h200.json, ncu_h200/ncu_gemv_{pairs,cuda_ldg,cuda_bulk}_*_b1.txt.

The design: gemv_pairs' decode (one LOP3 masks two subnormal fp16 codes out of a window of the chunk's words, one
`fma.rn.f16x2` multiplies both into a pair accumulator by the x kernel's scaled x pairs; `pair_schedule`), every
offset a compile-time constant (the layer's shape and layout are baked into the source), the x pairs of a chunk in
four 16-byte loads serving all R rows of the thread. One block of THREADS threads per R output rows; thread t takes
chunks t, t + THREADS, ... of every one of the R rows (adjacent threads read adjacent chunks), keeps one fp32 sum
per row, adds the rows' outliers ((value - base) x at the permuted column, strided over the block; the first of
each row loaded before the loop), and the block sums its threads' partial sums (R - 1 + 5 - log2 R warp shuffles,
then shared memory). x comes from gemv_pairs' x kernel with one chunk per tile, so both kernels multiply the same x
pairs. Statistics as gemv_pairs: a code or-ed under the exponent of 1.0 and one FFMA with (s2 2**bits,
-s2 z2 - s2 2**bits) gives s2 (q - z2). Launch: `torch.cuda._compile_kernel` (NVRTC; no toolkit headers: the fp16
work is inline PTX), one compiled kernel per (layout, shape, tile) kept for the process.
"""

from __future__ import annotations

import functools
import re

from .pair_schedule import pair_plan
from .spqr_matmul import FLOAT_ONE_BITS, _layout_args, _segment

ROWS = 4  # output rows per block (R): each x pair a thread loads serves R rows
THREADS = 128

_SOURCE = r"""
typedef unsigned int u32;
typedef unsigned short u16;
struct alignas(16) U4 { u32 x, y, z, w; };

__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
  u32 d; asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c)); return d; }
__device__ __forceinline__ void halves(u32 v, float &lo, float &hi) {
  asm("{ .reg .b16 l, h; mov.b32 {l, h}, %2; cvt.f32.f16 %0, l; cvt.f32.f16 %1, h; }" : "=f"(lo), "=f"(hi) : "r"(v)); }
__device__ __forceinline__ float h2f(u16 v) {
  float f; asm("{ .reg .b16 h; mov.b16 h, %1; cvt.f32.f16 %0, h; }" : "=f"(f) : "h"(v)); return f; }
__device__ __forceinline__ u32 funnel(u32 lo, u32 hi, u32 s) {
  u32 d; asm("shf.r.clamp.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(lo), "r"(hi), "r"(s)); return d; }
__device__ __forceinline__ u32 ldw(const u32 *p) { return __ldg(p); }
__device__ __forceinline__ float f_bits(u32 v) { return __int_as_float((int)v); }
// (a & b) | c in one LOP3 (c a register: nvcc splits an and with one immediate and an or with another in two)
__device__ __forceinline__ u32 and_or(u32 a, u32 b, u32 c) {
  u32 d; asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c)); return d; }

__device__ constexpr int PW[16] = {@pw@};   // window: word,
__device__ constexpr int PS[16] = {@ps@};   // shift,
__device__ constexpr int PF[16] = {@pf@};   // funnel with the next word
__device__ constexpr u32 PM[16] = {@pm@};   // the pair's two codes
__device__ constexpr int PT[16] = {@pt@};   // pair accumulator (type)
__device__ constexpr int TA[@nt@] = {@ta@};  // type -> segment of its low halves
__device__ constexpr int TB[@nt@] = {@tb@};  // and of its high halves

#define WB @wb@
#define NT @nt@
#define GROUP @group@
#define SEG @seg@
#define NSEG @nseg@
#define SB @sb@
#define ZB @zb@
#define BETA2 @beta2@
#define R @rows@
#define THREADS @threads@
#define OUT @out@
#define N_CHUNKS @n_chunks@
#define N_WORDS (N_CHUNKS * WB)
#define N_GROUPS @n_groups@
#define N_SWORDS @n_sw@
#define N_ZWORDS @n_zw@
#define BIAS @bias@  // 0: none, 1: fp16, 2: bf16, 3: fp32
#define OUT_BF16 @out_bf16@
#define SHARED2 @shared2@
#define MIN_BLOCKS @min_blocks@  // blocks per multiprocessor the registers must allow
#define BULK @bulk@  // the words through shared memory by bulk copies (else: loads one chunk ahead)
#define STAGES @stages@

// First-level statistic (fp32) of segment g from a window of packed BITS-bit codes (code of segment 0 in the low
// bits) and the second-level (scale, zero) (s2, z2): s2 (q - z2) as one FFMA on q or-ed under 1.0's exponent.
template <int BITS>
__device__ __forceinline__ float stat(u32 win, int g, u32 one, float s2, float z2) {
  constexpr int T = 23 - BITS;
  const int P = g * BITS;  // (g: an unrolled loop's constant)
  u32 b = P >= T ? (win >> (P - T)) : (win << (T - P));
  float m = f_bits(and_or(b, ((1u << BITS) - 1u) << T, one));
  float s8 = s2 * (float)(1 << BITS);
  return fmaf(m, s8, -s2 * z2 - s8);
}

// The window of packed statistic codes of row r from group g0 on (NSEG codes of BITS bits).
template <int BITS, int NW>
__device__ __forceinline__ u32 stat_window(const u32 *q, int r0, int i, int g0) {
  int bit = g0 * BITS;
  const u32 *p = q + (size_t)r0 * NW + i * NW + (bit >> 5);  // (row r0 + i; i: an unrolled loop's constant)
  int off = bit & 31;
  u32 lo = ldw(p);
  u32 hi = (off + NSEG * BITS > 32) ? ldw(p + 1) : 0u;
  return funnel(lo, hi, off);
}

__device__ __forceinline__ void second(const u32 *st, int r, int G, float &s2, float &z2) {
  u32 w = ldw(st + (size_t)(r / BETA2) * N_GROUPS + G);
  halves(w, s2, z2);
}

// One chunk c of the block's R rows (their words w) into the rows' sums: x pairs, decode, statistics.
__device__ __forceinline__ void chunk(float (&acc)[R], const u32 (&w)[R][WB], int c, int r0, const int (&rr)[R],
    const u32 *__restrict__ xp, const float *__restrict__ sc, const float *__restrict__ xs,
    const u32 *__restrict__ sq, const u32 *__restrict__ sst, const u16 *__restrict__ s16,
    const u32 *__restrict__ zq, const u32 *__restrict__ zst, const u16 *__restrict__ z16, u32 one) {
  // this chunk's x pairs, its scale 2**k and its segments' sums of x
  const U4 *xq = reinterpret_cast<const U4 *>(xp + c * 16);
  U4 x4[4];
#pragma unroll
  for (int k = 0; k < 4; k++) x4[k] = xq[k];
  u32 xv[16] = {x4[0].x, x4[0].y, x4[0].z, x4[0].w, x4[1].x, x4[1].y, x4[1].z, x4[1].w,
                x4[2].x, x4[2].y, x4[2].z, x4[2].w, x4[3].x, x4[3].y, x4[3].z, x4[3].w};
  const float scc = sc[c];
  float X[NSEG];
#pragma unroll
  for (int g = 0; g < NSEG; g++) X[g] = xs[c * NSEG + g];
  // the chunk's groups (a padded last chunk may reach past the last: its codes and x are zero, so any finite
  // statistics of a clamped group add exactly 0)
  int G[NSEG];
#pragma unroll
  for (int g = 0; g < NSEG; g++)
    G[g] = min(GROUP == 0 ? 0 : (c * 32 + g * SEG) / (GROUP == 0 ? 1 : GROUP), N_GROUPS - 1);
  // the row block's second-level statistics, once for all R rows when they share a beta2 block
  float ss2[NSEG], sz2[NSEG], zs2[NSEG], zz2[NSEG];
  if (SHARED2) {
#pragma unroll
    for (int g = 0; g < NSEG; g++) {
      if (SB > 0) second(sst, r0, G[g], ss2[g], sz2[g]);
      if (ZB > 0) second(zst, r0, G[g], zs2[g], zz2[g]);
    }
  }
  u32 swin[R], zwin[R];
#pragma unroll
  for (int i = 0; i < R; i++) {
    swin[i] = SB > 0 ? stat_window<(SB > 0 ? SB : 1), N_SWORDS>(sq, r0, rr[i] - r0, G[0]) : 0u;
    zwin[i] = ZB > 0 ? stat_window<(ZB > 0 ? ZB : 1), N_ZWORDS>(zq, r0, rr[i] - r0, G[0]) : 0u;
  }
#pragma unroll
  for (int i = 0; i < R; i++) {
    u32 a[NT];
#pragma unroll
    for (int n = 0; n < NT; n++) a[n] = 0u;
#pragma unroll
    for (int n = 0; n < 16; n++) {
      u32 lo = w[i][PW[n]];
      u32 win = PF[n] ? funnel(lo, w[i][PF[n] ? PW[n] + 1 : PW[n]], PS[n]) : (lo >> PS[n]);
      a[PT[n]] = hfma2(win & PM[n], xv[n], a[PT[n]]);
    }
    float p[NSEG];
#pragma unroll
    for (int g = 0; g < NSEG; g++) p[g] = -0.f;  // (-0 + v = v: the first add folds away)
#pragma unroll
    for (int n = 0; n < NT; n++) {
      float l, h;
      halves(a[n], l, h);
      p[TA[n]] += l;
      p[TB[n]] += h;
    }
#pragma unroll
    for (int g = 0; g < NSEG; g++) {
      float s, z;
      if (SB > 0) {
        float a2 = ss2[g], b2 = sz2[g];
        if (!SHARED2) second(sst, rr[i], G[g], a2, b2);
        s = stat<(SB > 0 ? SB : 1)>(swin[i], g, one, a2, b2);
      } else {
        s = h2f(s16[(size_t)rr[i] * N_GROUPS + G[g]]);
      }
      if (ZB > 0) {
        float a2 = zs2[g], b2 = zz2[g];
        if (!SHARED2) second(zst, rr[i], G[g], a2, b2);
        z = stat<(ZB > 0 ? ZB : 1)>(zwin[i], g, one, a2, b2);
      } else {
        z = h2f(z16[(size_t)rr[i] * N_GROUPS + G[g]]);
      }
      acc[i] = fmaf(s, fmaf(scc, p[g], -z * X[g]), acc[i]);
    }
  }
}

__device__ __forceinline__ void load_first_outliers(int (&col0)[R], float (&dv0)[R], const int (&olo)[R],
    const int (&ohi)[R], const u16 *__restrict__ cols, const u16 *__restrict__ vals, const float *__restrict__ bases) {
#pragma unroll
  for (int i = 0; i < R; i++) {
    bool has = olo[i] < ohi[i];
    int k = has ? olo[i] : 0;
    col0[i] = has ? cols[k] : 0;
    dv0[i] = has ? h2f(vals[k]) - bases[k] : 0.f;
  }
}

__device__ __forceinline__ u32 smem_addr(const void *p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(unsigned long long *bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem_addr(bar)) : "memory"); }
__device__ __forceinline__ void mbar_wait(unsigned long long *bar, u32 parity) {
  u32 done = 0;
  while (!done)
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(done) : "r"(smem_addr(bar)), "r"(parity) : "memory");
}
// Stage `it` (chunks it THREADS ..) of every row of the block into `dst` by one bulk copy per row (16-byte
// multiples: the launcher asks for a whole number of 4-chunk groups per row), completing on `bar`.
__device__ __forceinline__ void bulk_stage(u32 (*dst)[THREADS * WB], unsigned long long *bar, const u32 *wrow,
                                           const int (&rr)[R], int r0, int it) {
  const int n = min(THREADS, N_CHUNKS - it * THREADS) * WB * 4;
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(smem_addr(bar)), "r"(n * R)
               : "memory");
#pragma unroll
  for (int i = 0; i < R; i++)
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :: "r"(smem_addr(dst[i])), "l"(wrow + (rr[i] - r0) * N_WORDS + it * THREADS * WB), "r"(n),
                    "r"(smem_addr(bar)) : "memory");
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) spqr_gemv_cuda(
    const u32 *__restrict__ xp, const float *__restrict__ sc, const float *__restrict__ xs,
    const float *__restrict__ xo, const u32 *__restrict__ codes, const u32 *__restrict__ sq,
    const u32 *__restrict__ sst, const u16 *__restrict__ s16, const u32 *__restrict__ zq,
    const u32 *__restrict__ zst, const u16 *__restrict__ z16, const int *__restrict__ row_ptr,
    const u16 *__restrict__ cols, const u16 *__restrict__ vals, const float *__restrict__ bases,
    const void *__restrict__ bias, u16 *__restrict__ y, u32 one) {
  const int r0 = blockIdx.x * R;
  const int t = threadIdx.x;
  float acc[R];
#pragma unroll
  for (int i = 0; i < R; i++) acc[i] = 0.f;
  // the block's rows (the last block's past OUT read row OUT - 1 and store nothing): rows r0 + i of a full block
  // lie at compile-time offsets from row r0's
  int rr[R];
#pragma unroll
  for (int i = 0; i < R; i++) rr[i] = OUT % R == 0 ? r0 + i : min(r0 + i, OUT - 1);
  const u32 *wrow = codes + (size_t)r0 * N_WORDS;
  // the rows' outlier ranges, loaded first: the first outlier of each row (one per thread) is loaded after the
  // first chunk's words are on their way, its x at the end (the chain row_ptr -> column -> x then overlaps the loop)
  int olo[R], ohi[R];
#pragma unroll
  for (int i = 0; i < R; i++) {
    olo[i] = row_ptr[rr[i]] + t;
    ohi[i] = r0 + i < OUT ? row_ptr[rr[i] + 1] : 0;
  }
  int col0[R];
  float dv0[R];
#if BULK
  // the words come through shared memory: per stage of THREADS chunks one bulk copy per row (thread 0 issues it,
  // STAGES stages ahead), completing on the stage's mbarrier
  constexpr int NST = (N_CHUNKS + THREADS - 1) / THREADS;
  __shared__ alignas(128) u32 wsm[STAGES][R][THREADS * WB];
  __shared__ alignas(8) unsigned long long bar[STAGES];
  if (t == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; s++) mbar_init(&bar[s]);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (t == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; s++)
      if (s < NST) bulk_stage(wsm[s], &bar[s], wrow, rr, r0, s);
  }
  load_first_outliers(col0, dv0, olo, ohi, cols, vals, bases);
#pragma unroll 1
  for (int it = 0; it < NST; it++) {
    const int slot = it % STAGES;
    const int c = it * THREADS + t;
    mbar_wait(&bar[slot], (it / STAGES) & 1);
    u32 w[R][WB];
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
      for (int k = 0; k < WB; k++) w[i][k] = wsm[slot][i][t * WB + k];
    if (NST > STAGES) {
      __syncthreads();  // (every thread holds its words of this slot: refill it)
      if (t == 0 && it + STAGES < NST) {
        // (the block's reads of the slot, generic proxy, ordered before the copy's writes, async proxy)
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        bulk_stage(wsm[slot], &bar[slot], wrow, rr, r0, it + STAGES);
      }
    }
    if (c < N_CHUNKS) chunk(acc, w, c, r0, rr, xp, sc, xs, sq, sst, s16, zq, zst, z16, one);
  }
#else
  u32 wn[R][WB];  // the next chunk's words (loaded one chunk ahead)
  if (t < N_CHUNKS) {
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
      for (int k = 0; k < WB; k++) wn[i][k] = ldw(wrow + (rr[i] - r0) * N_WORDS + t * WB + k);
  }
  load_first_outliers(col0, dv0, olo, ohi, cols, vals, bases);
#pragma unroll 1
  for (int c = t; c < N_CHUNKS; c += THREADS) {
    u32 w[R][WB];
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
      for (int k = 0; k < WB; k++) w[i][k] = wn[i][k];
    if (c + THREADS < N_CHUNKS) {
#pragma unroll
      for (int i = 0; i < R; i++)
#pragma unroll
        for (int k = 0; k < WB; k++) wn[i][k] = ldw(wrow + (rr[i] - r0) * N_WORDS + (c + THREADS) * WB + k);
    }
    chunk(acc, w, c, r0, rr, xp, sc, xs, sq, sst, s16, zq, zst, z16, one);
  }
#endif
  // outliers: (value - base) x at the permuted column, the block's threads strided over each row's
#pragma unroll
  for (int i = 0; i < R; i++) {
    acc[i] += dv0[i] * xo[col0[i]];
#pragma unroll 1
    for (int k = olo[i] + THREADS; k < ohi[i]; k += THREADS) acc[i] += (h2f(vals[k]) - bases[k]) * xo[cols[k]];
  }
  // the rows' sums over the warp: R - 1 + 5 - log2(R) shuffles (each step halves the values a lane keeps: the
  // upper lanes of the step keep the upper half), then over the block's warps through shared memory
  constexpr int LOG_R = R >= 8 ? 3 : R >= 4 ? 2 : R >= 2 ? 1 : 0;
  const int lane = t & 31;
  float v = acc[0];
  int row = 0;
  if ((1 << LOG_R) == R) {
#pragma unroll
    for (int step = 0, half = R / 2, off = 16; step < LOG_R; step++, half /= 2, off /= 2) {
      const bool upper = lane & off;
#pragma unroll
      for (int j = 0; j < half; j++) {
        float send = upper ? acc[j] : acc[j + half];
        acc[j] = (upper ? acc[j + half] : acc[j]) + __shfl_xor_sync(0xffffffffu, send, off);
      }
      row += upper ? half : 0;
    }
    v = acc[0];
#pragma unroll
    for (int off = 16 >> LOG_R; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  }
  const bool writer = (lane & ((32 >> LOG_R) - 1)) == 0;  // one lane per row holds its sum
  __shared__ float part[THREADS / 32][R];
  if ((1 << LOG_R) == R) {
    if (writer) part[t >> 5][row] = v;
  } else {  // (R not a power of two: each row reduced on its own)
#pragma unroll
    for (int i = 0; i < R; i++) {
      float u = acc[i];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) u += __shfl_xor_sync(0xffffffffu, u, off);
      if (lane == 0) part[t >> 5][i] = u;
    }
  }
  __syncthreads();
  if (t < R && r0 + t < OUT) {
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < THREADS / 32; k++) v += part[k][t];
    if (BIAS == 1) v += h2f(static_cast<const u16 *>(bias)[r0 + t]);
    if (BIAS == 2) v += __int_as_float(((int)static_cast<const u16 *>(bias)[r0 + t]) << 16);
    if (BIAS == 3) v += static_cast<const float *>(bias)[r0 + t];
    u16 o;
    if (OUT_BF16) asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(o) : "f"(v));
    else asm("cvt.rn.f16.f32 %0, %1;" : "=h"(o) : "f"(v));
    y[r0 + t] = o;
  }
}
"""


def supports(x_dtype, wbits: int, group: int, beta2: int, scale_bits: int, zero_bits: int) -> bool:
    """Whether gemv_cuda takes this input and layout: gemv_pairs' (`gemv_pairs.supports`), second-level statistics
    in beta2 blocks whenever the first-level ones are codes, and a CUDA device with NVRTC (checked at launch)."""
    from . import gemv_pairs

    return gemv_pairs.supports(x_dtype, wbits, group) and (beta2 > 0 or (scale_bits == 0 and zero_bits == 0))


BULK_SMEM = 48 * 1024  # static shared memory of a block


def can_bulk(codes, n_chunks: int, wbits: int, rows: int, threads: int, stages: int) -> bool:
    """Whether the bulk-copy path takes this layer: every row and stage a whole number of 16-byte groups, a
    16-byte aligned codes tensor, the stages within a block's static shared memory."""
    return (n_chunks * wbits) % 4 == 0 and codes.data_ptr() % 16 == 0 and \
        stages * rows * threads * wbits * 4 <= BULK_SMEM


def source(out_features: int, in_features: int, wbits: int, group: int, beta2: int, scale_bits: int, zero_bits: int,
           *, bias_dtype=None, out_bf16: bool, rows: int = ROWS, threads: int = THREADS,
           min_blocks: int = 1, bulk: bool = False, stages: int = 2) -> str:
    """The kernel's CUDA source for one layer shape and layout (every size a compile-time constant); bias_dtype:
    None (no bias) or the bias' torch dtype (fp16, bf16, fp32)."""
    import torch

    bias_kinds = {None: 0, torch.float16: 1, torch.bfloat16: 2, torch.float32: 3}
    plan, types = pair_plan(wbits, group)
    n_chunks, n_groups, n_sw, n_zw = _layout_args(in_features, out_features, wbits, group, scale_bits, zero_bits)
    seg = _segment(group)

    def ints(values):
        return ", ".join(str(int(v)) for v in values)

    values = {
        "pw": ints(e[0] for e in plan), "ps": ints(e[1] for e in plan), "pf": ints(e[2] for e in plan),
        "pm": ", ".join(f"{e[3]}u" for e in plan), "pt": ints(e[5] for e in plan), "nt": len(types),
        "ta": ints(t[0] for t in types), "tb": ints(t[1] for t in types), "wb": wbits, "group": group, "seg": seg,
        "nseg": 32 // seg, "sb": scale_bits, "zb": zero_bits, "beta2": max(beta2, 1), "rows": rows,
        "threads": threads, "out": out_features, "n_chunks": n_chunks, "n_groups": n_groups, "n_sw": n_sw,
        "n_zw": n_zw, "bias": bias_kinds[bias_dtype], "out_bf16": int(out_bf16),
        "shared2": int(beta2 > 0 and beta2 % rows == 0), "min_blocks": min_blocks, "bulk": int(bulk),
        "stages": stages,
    }
    return re.sub(r"@(\w+)@", lambda m: str(values[m.group(1)]), _SOURCE)


@functools.cache
def _compiled(src: str):
    import torch

    return torch.cuda._compile_kernel(src, "spqr_gemv_cuda")


def gemv_cuda(x, codes, scale, scale_stats, zero, zero_stats, row_ptr, cols, vals, perm, bias,
              out_features, wbits, group, beta2, scale_bits, zero_bits, *, bases=None, rows=ROWS, threads=THREADS,
              min_blocks=None, bulk=None, stages=2):
    """y [1, out] = x [1, in] W^T (+ bias) for one row of fp16 / bf16 x: gemv_pairs' x kernel, then this module's
    CUDA kernel. `bases`: the outliers' base weights (`SpQRLinear.outlier_bases`), required. `bulk`: the words
    through shared memory by bulk copies, `stages` ahead (None: where `can_bulk`)."""
    import torch

    from . import gemv_pairs

    M, n_in = x.shape
    if M != 1 or not supports(x.dtype, wbits, group, beta2, scale_bits, zero_bits) or bases is None:
        raise ValueError(f"gemv_cuda takes one row of fp16 / bf16 x, a layout with a pair schedule and the outliers' "
                         f"bases; got {M} rows of {x.dtype}, wbits {wbits}, group {group}, bases {bases is not None}")
    n_chunks = -(-n_in // 32)
    if bulk is None:
        bulk = can_bulk(codes, n_chunks, wbits, rows, threads, stages)
    elif bulk and not can_bulk(codes, n_chunks, wbits, rows, threads, stages):
        raise ValueError(f"bulk copies need rows of whole 16-byte groups ({n_chunks} chunks of {wbits} words), a "
                         f"16-byte aligned codes tensor and at most {BULK_SMEM} bytes of stages")
    n_pad = -(-n_chunks // 32) * 32 if n_chunks > 32 else 1 << (n_chunks - 1).bit_length()
    xp, sc, xs, xo = gemv_pairs.gather_x_pairs(x, perm, wbits, group, 1, n_pad)
    src = source(out_features, n_in, wbits, group, beta2, scale_bits, zero_bits,
                 bias_dtype=bias.dtype if bias is not None else None,
                 out_bf16=x.dtype == torch.bfloat16, rows=rows, threads=threads,
                 min_blocks=min_blocks or max(1, 1024 // threads), bulk=bulk, stages=stages)
    kernel = _compiled(src)
    y = torch.empty(1, out_features, dtype=x.dtype, device=x.device)
    sq = scale if scale_bits else codes
    zq = zero if zero_bits else codes
    kernel(grid=(-(-out_features // rows), 1, 1), block=(threads, 1, 1),
           args=[xp.view(torch.int32), sc, xs, xo, codes, sq, scale_stats if scale_bits else codes,
                 codes if scale_bits else scale, zq, zero_stats if zero_bits else codes, codes if zero_bits else zero,
                 row_ptr, cols, vals, bases, bias if bias is not None else vals, y, FLOAT_ONE_BITS])
    return y
