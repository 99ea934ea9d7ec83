// The CUDA kernels: reduction (forward, and the lse of normalized_weights)
// and the element-wise weights pass (backward, normalized_weights).
//
// Memory-bound by design: each input is read once per direction, 16-byte
// vector loads where pointers and strides allow, and the online (max, sum)
// state and its merge come from ../online_lse.h, shared with the CPU kernels.
//
// Reduction layouts (plan.h's geometry [outer, K, inner]):
//  * rows (sk == 1): a warp per row for short rows, the whole block for long
//    ones; lanes keep their own state and merge by shuffles (and shared
//    memory across warps).
//  * columns (si == 1, e.g. [K, B] over dim 0): a thread owns VEC adjacent
//    columns, so a warp reads 32 x 16 B of one row (or 8 x 16 B of four,
//    where the columns are too few for wide blocks to fill the GPU);
//    threadIdx.y splits the rows of the block, merged by a tree in shared
//    memory.
//  * short slices (K <= 64, each outer slice of K x inner contiguous): a
//    block reads a tile of whole slices into shared memory, then a thread per
//    output reduces its K values from there (reduce_tiles_kernel says why).
// Rows and columns: when there are too few outputs to fill the GPU (B of
// 1..64 with K up to 1e6; for columns, after narrowing the blocks),
// gridDim.y splits K; each piece writes its (max,
// sum) state to a workspace and merge_kernel combines them.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <numeric>

#include "../online_lse.h"
#include "device_api.h"
#include "kernel_api.h"
#include "tiles.h"

namespace iwae_fused::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerStep = 4; // columns: rows loaded before one rescale
constexpr int kMinColLanes = 8; // columns: fewest threads per row (8 x 16 B, four sectors)
constexpr int kWarpRowMaxK = 4096; // rows longer than this get a whole block
constexpr int64_t kTailWaves = 4; // launch_reduce: split K below this many waves

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

// VEC elements of log_w = beta * (P - Q) (Q optional) at P + off, widened to
// opmath; positions at or past `avail` read as -inf (the identity of the
// state; set after scaling, so a negative beta cannot flip them).
template <typename scalar_t, typename opmath_t, int VEC, bool HAS_Q>
__device__ __forceinline__ void load_log_w(
    const scalar_t* P, const scalar_t* Q, int64_t poff, int64_t qoff,
    int64_t avail, opmath_t beta, opmath_t (&x)[VEC]) {
  if (VEC > 1 && avail >= VEC) {
    const auto pv = ld_global(reinterpret_cast<const Pack<scalar_t, VEC>*>(P + poff));
#pragma unroll
    for (int c = 0; c < VEC; ++c) x[c] = static_cast<opmath_t>(pv.v[c]);
    if constexpr (HAS_Q) {
      const auto qv = ld_global(reinterpret_cast<const Pack<scalar_t, VEC>*>(Q + qoff));
#pragma unroll
      for (int c = 0; c < VEC; ++c) x[c] -= static_cast<opmath_t>(qv.v[c]);
    }
#pragma unroll
    for (int c = 0; c < VEC; ++c) x[c] *= beta;
    return;
  }
#pragma unroll
  for (int c = 0; c < VEC; ++c) {
    if (c < avail) {
      x[c] = static_cast<opmath_t>(ld_global(P + poff + c));
      if constexpr (HAS_Q) x[c] -= static_cast<opmath_t>(ld_global(Q + qoff + c));
      x[c] *= beta;
    } else {
      x[c] = opmath_t(-INFINITY);
    }
  }
}

// ROWS whole vectors of log_w at P + off + j * stride (j < ROWS), every
// load issued before any value is used: a thread then has ROWS x 16 B per
// operand in flight, where a load used at once keeps 16 B (the compiler
// cannot hoist the loads of load_log_w's branches; benchmarks/NOTES.md,
// GPU 1). The same arithmetic as load_log_w, value for value.
template <typename scalar_t, typename opmath_t, int VEC, int ROWS, bool HAS_Q>
__device__ __forceinline__ void load_log_w_rows(
    const scalar_t* P, const scalar_t* Q, int64_t poff, int64_t qoff, int64_t pstride,
    int64_t qstride, opmath_t beta, opmath_t (&x)[ROWS][VEC]) {
  using V = Pack<scalar_t, VEC>;
  V pv[ROWS], qv[ROWS];
#pragma unroll
  for (int j = 0; j < ROWS; ++j) {
    pv[j] = ld_global(reinterpret_cast<const V*>(P + poff + j * pstride));
    if constexpr (HAS_Q) qv[j] = ld_global(reinterpret_cast<const V*>(Q + qoff + j * qstride));
  }
#pragma unroll
  for (int j = 0; j < ROWS; ++j) {
#pragma unroll
    for (int c = 0; c < VEC; ++c) {
      x[j][c] = static_cast<opmath_t>(pv[j].v[c]);
      if constexpr (HAS_Q) x[j][c] -= static_cast<opmath_t>(qv[j].v[c]);
      x[j][c] *= beta;
    }
  }
}

// One step of kRowsPerStep rows of VEC columns for the column kernel: a
// whole step (every row present, whole vectors) with all its loads in
// flight at once; otherwise row by row, masked. No branch where VEC == 1.
template <typename scalar_t, typename opmath_t, int VEC, bool HAS_Q>
__device__ __forceinline__ void load_cols_step(
    const ReduceArgs& a, const scalar_t* p, const scalar_t* q, int64_t o, int64_t k,
    int64_t k1, int64_t i0, int64_t avail, opmath_t beta, opmath_t (&x)[kRowsPerStep][VEC]) {
  if constexpr (VEC > 1) {
    if (avail >= VEC && k + kRowsPerStep <= k1) {
      load_log_w_rows<scalar_t, opmath_t, VEC, kRowsPerStep, HAS_Q>(
          p, q, o * a.p.so + k * a.p.sk + i0, HAS_Q ? o * a.q.so + k * a.q.sk + i0 : 0,
          a.p.sk, a.q.sk, beta, x);
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < kRowsPerStep; ++j) {
    const int64_t kk = k + j;
    load_log_w<scalar_t, opmath_t, VEC, HAS_Q>(
        p, q, o * a.p.so + kk * a.p.sk + i0, HAS_Q ? o * a.q.so + kk * a.q.sk + i0 : 0,
        kk < k1 ? avail : 0, beta, x[j]);
  }
}

// Fold VEC values into one state (m, s, t): one rescale, VEC exponentials.
// t, the weights' second moment, serves the diagnostics only; it costs one
// fma per element, nothing next to the loads of a memory-bound kernel.
template <typename opmath_t, int VEC>
__device__ __forceinline__ void absorb(
    opmath_t& m, opmath_t& s, opmath_t& t, const opmath_t (&x)[VEC]) {
  using Lane = LaneOps<opmath_t>;
  const opmath_t sh = absorb_max2(m, s, t, max_of(x));
#pragma unroll
  for (int c = 0; c < VEC; ++c) {
    const opmath_t e = Lane::exp(x[c] - sh);
    s += e;
    t += e * e;
  }
}

// The same for the first n of the VEC values (the rest are -inf, the
// state's identity): n exponentials.
template <typename opmath_t, int VEC>
__device__ __forceinline__ void absorb_first(
    opmath_t& m, opmath_t& s, opmath_t& t, const opmath_t (&x)[VEC], int n) {
  using Lane = LaneOps<opmath_t>;
  const opmath_t sh = absorb_max2(m, s, t, max_of(x));
#pragma unroll
  for (int c = 0; c < VEC; ++c) {
    if (c < n) {
      const opmath_t e = Lane::exp(x[c] - sh);
      s += e;
      t += e * e;
    }
  }
}

// Where lane c of a VEC-wide access is tested against the `avail` (>= 1)
// elements left, `VEC == 1 ||` states that the lane of a scalar access is
// always live (its caller's loop bound holds): that instantiation then has
// no test that could never fail.

// The final state of output idx: to the workspace of its K piece
// ([3][pieces][outputs]: m, s, t), or finalised into out (dtype), stats
// (shift, log-sum) and the diagnostics, whichever are asked for.
template <typename scalar_t, typename opmath_t>
__device__ __forceinline__ void emit(
    const ReduceArgs& a, opmath_t* ws, int64_t piece, int64_t idx, opmath_t m,
    opmath_t s, opmath_t t) {
  const int64_t n = a.outer * a.inner;
  if (ws) {
    const int64_t pieces = gridDim.y;
    st_global(ws + piece * n + idx, m);
    st_global(ws + (pieces + piece) * n + idx, s);
    st_global(ws + (2 * pieces + piece) * n + idx, t);
    return;
  }
  using Lane = LaneOps<opmath_t>;
  if (a.ess) {
    opmath_t e, mw;
    diagnostics(m, s, t, e, mw);
    st_global(static_cast<scalar_t*>(a.ess) + idx, e);
    st_global(static_cast<scalar_t*>(a.max_w) + idx, mw);
  }
  const opmath_t sh = Lane::shift(m), ls = Lane::log(s);
  if (a.stats) {
    auto* st = static_cast<opmath_t*>(a.stats);
    st_global(st + idx, sh);
    st_global(st + n + idx, a.plain_log_sum ? ls : Lane::log_norm(s));
  }
  if (a.out) {
    st_global(
        static_cast<scalar_t*>(a.out) + idx,
        (sh + (ls - Lane::log(static_cast<opmath_t>(a.K)))) /
            static_cast<opmath_t>(a.beta));
  }
}

// Rows: TPR threads (a warp, or the block) per row, K contiguous.
template <typename scalar_t, int VEC, int TPR, bool HAS_Q>
__global__ void __launch_bounds__(kThreads) reduce_rows_kernel(
    ReduceArgs a, int64_t kchunk, at::opmath_type<scalar_t>* ws) {
  using opmath_t = at::opmath_type<scalar_t>;
  // Whole warps per row: the shuffles below name all 32 lanes, so a group
  // smaller than a warp would be a divergent shuffle.
  static_assert(TPR % 32 == 0 && kThreads % TPR == 0, "rows: whole warps per row");
  constexpr int kGroups = kThreads / TPR;
  constexpr int kWarps = kThreads / 32;
  IWAE_SHARED(opmath_t, sm_m, kWarps);
  IWAE_SHARED(opmath_t, sm_s, kWarps);
  IWAE_SHARED(opmath_t, sm_t, kWarps);
  const auto* p = static_cast<const scalar_t*>(a.p.data);
  const auto* q = static_cast<const scalar_t*>(a.q.data);
  const opmath_t beta = static_cast<opmath_t>(a.beta);
  const int group = threadIdx.x / TPR, lane = threadIdx.x % TPR;
  const int64_t piece = blockIdx.y;
  const int64_t k0 = piece * kchunk, k1 = std::min<int64_t>(a.K, k0 + kchunk);
  const int64_t rows = a.outer * a.inner;
  // The loop bound is uniform over a group (a warp, or the whole block for
  // TPR == kThreads), so the shuffles and barriers below are never divergent.
  for (int64_t r = (int64_t)blockIdx.x * kGroups + group; r < rows;
       r += (int64_t)gridDim.x * kGroups) {
    const int64_t o = r / a.inner, i = r - o * a.inner;
    const int64_t pbase = o * a.p.so + i * a.p.si;
    const int64_t qbase = HAS_Q ? o * a.q.so + i * a.q.si : 0;
    opmath_t m = opmath_t(-INFINITY), s = opmath_t(0), t = opmath_t(0);
    int64_t k = k0 + (int64_t)lane * VEC;
    if constexpr (VEC > 1) {
      // Two steps at a time while both vectors are whole: twice the bytes
      // in flight, the same states absorbed in the same order.
      constexpr int64_t kStep = (int64_t)TPR * VEC;
      for (; k + kStep + VEC <= k1; k += 2 * kStep) {
        opmath_t x[2][VEC];
        load_log_w_rows<scalar_t, opmath_t, VEC, 2, HAS_Q>(
            p, q, pbase + k, qbase + k, kStep, kStep, beta, x);
        absorb<opmath_t, VEC>(m, s, t, x[0]);
        absorb<opmath_t, VEC>(m, s, t, x[1]);
      }
    }
    for (; k < k1; k += (int64_t)TPR * VEC) {
      opmath_t x[VEC];
      load_log_w<scalar_t, opmath_t, VEC, HAS_Q>(
          p, q, pbase + k, qbase + k, k1 - k, beta, x);
      absorb<opmath_t, VEC>(m, s, t, x);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      const opmath_t m2 = __shfl_xor_sync(0xffffffffu, m, off);
      const opmath_t s2 = __shfl_xor_sync(0xffffffffu, s, off);
      const opmath_t t2 = __shfl_xor_sync(0xffffffffu, t, off);
      merge2(m, s, t, m2, s2, t2);
    }
    if constexpr (TPR > 32) {
      const int warp = threadIdx.x / 32;
      if (threadIdx.x % 32 == 0) {
        st_shared(sm_m + warp, m), st_shared(sm_s + warp, s), st_shared(sm_t + warp, t);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        for (int w = 1; w < kWarps; ++w) {
          merge2(m, s, t, ld_shared(sm_m + w), ld_shared(sm_s + w), ld_shared(sm_t + w));
        }
      }
      __syncthreads(); // sm_* are rewritten by the next row
    }
    if (lane == 0) emit<scalar_t>(a, ws, piece, r, m, s, t);
  }
}

// A thread's VEC column states into the block's exchange, laid out
// [c][thread] (consecutive threads, consecutive words: no bank conflict).
// (Shared: the __shared__ array, or the emulator's stand-in for it.)
template <int VEC, typename Shared, typename opmath_t>
__device__ __forceinline__ void publish_states(
    Shared& sm_m, Shared& sm_s, Shared& sm_t, int tid,
    const opmath_t (&m)[VEC], const opmath_t (&s)[VEC], const opmath_t (&t)[VEC]) {
#pragma unroll
  for (int c = 0; c < VEC; ++c) {
    st_shared(sm_m + c * kThreads + tid, m[c]);
    st_shared(sm_s + c * kThreads + tid, s[c]);
    st_shared(sm_t + c * kThreads + tid, t[c]);
  }
}

// Columns: thread (x, y) owns VEC adjacent columns and every blockDim.y-th
// step of kRowsPerStep rows of its K piece.
template <typename scalar_t, int VEC, bool HAS_Q>
__global__ void __launch_bounds__(kThreads) reduce_cols_kernel(
    ReduceArgs a, int64_t kchunk, at::opmath_type<scalar_t>* ws) {
  using opmath_t = at::opmath_type<scalar_t>;
  IWAE_SHARED(opmath_t, sm_m, kThreads * VEC);
  IWAE_SHARED(opmath_t, sm_s, kThreads * VEC);
  IWAE_SHARED(opmath_t, sm_t, kThreads * VEC);
  const auto* p = static_cast<const scalar_t*>(a.p.data);
  const auto* q = static_cast<const scalar_t*>(a.q.data);
  const opmath_t beta = static_cast<opmath_t>(a.beta);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int TX = blockDim.x, TY = blockDim.y;
  const int64_t i0 = ((int64_t)blockIdx.x * TX + tx) * VEC;
  const int64_t piece = blockIdx.y;
  const int64_t k0 = piece * kchunk, k1 = std::min<int64_t>(a.K, k0 + kchunk);
  const int tid = ty * TX + tx;
  for (int64_t o = blockIdx.z; o < a.outer; o += gridDim.z) {
    opmath_t m[VEC], s[VEC], t[VEC];
#pragma unroll
    for (int c = 0; c < VEC; ++c) {
      m[c] = opmath_t(-INFINITY), s[c] = opmath_t(0), t[c] = opmath_t(0);
    }
    if (i0 < a.inner) {
      const int64_t avail = a.inner - i0;
      for (int64_t k = k0 + (int64_t)ty * kRowsPerStep; k < k1;
           k += (int64_t)TY * kRowsPerStep) {
        opmath_t x[kRowsPerStep][VEC];
        load_cols_step<scalar_t, opmath_t, VEC, HAS_Q>(a, p, q, o, k, k1, i0, avail, beta, x);
#pragma unroll
        for (int c = 0; c < VEC; ++c) {
          opmath_t col[kRowsPerStep];
#pragma unroll
          for (int j = 0; j < kRowsPerStep; ++j) col[j] = x[j][c];
          absorb<opmath_t, kRowsPerStep>(m[c], s[c], t[c], col);
        }
      }
    }
    // The block's TY states per column merge in a tree over ty: log2(TY)
    // rounds, one barrier each (a serial merge by the threads of ty == 0
    // would take TY - 1 steps on 1/TY of the block; TY is 32 for 8-lane
    // blocks). Round h: ty < h merges ty + h's state and publishes its own;
    // the slots read ([h, 2h)) and written ([0, h)) are disjoint.
    publish_states<VEC>(sm_m, sm_s, sm_t, tid, m, s, t);
#pragma unroll 1
    for (int h = kThreads / 2; h > 0; h /= 2) {
      if (h >= TY) continue; // the same for the whole block: no barrier skipped by some threads only
      __syncthreads();
      if ((ty < h) & (ty + h < TY)) { // `&`: one condition (TY is a power of two for VEC == 1)
        const int other = tid + h * TX;
#pragma unroll
        for (int c = 0; c < VEC; ++c) {
          merge2(m[c], s[c], t[c], ld_shared(sm_m + c * kThreads + other),
                 ld_shared(sm_s + c * kThreads + other), ld_shared(sm_t + c * kThreads + other));
        }
        if (h > 1) publish_states<VEC>(sm_m, sm_s, sm_t, tid, m, s, t); // thread 0 keeps the last round's result in registers
      }
    }
    if (ty == 0 && i0 < a.inner) {
#pragma unroll
      for (int c = 0; c < VEC; ++c) {
        if (VEC == 1 || i0 + c < a.inner) {
          emit<scalar_t>(a, ws, piece, o * a.inner + i0 + c, m[c], s[c], t[c]);
        }
      }
    }
    __syncthreads(); // sm_* are rewritten for the next o
  }
}

// Short slices: rows with small K ([B, K] over the last dim) and columns
// with a small inner size ([B, K, 2] over dim 1). The kernels above give
// such a slice a warp (rows: most lanes idle, five shuffle rounds per row) or
// a block (columns: idle threads, 32-byte sectors a quarter used). When each
// outer slice of K x inner elements is contiguous and the slices follow one
// another, a block instead reads a tile of whole slices into shared memory,
// coalesced and in 16-byte vectors (every lane busy, every sector full), as
// log-weights; after one barrier each thread reduces one output's K values
// from the tile with the same online state, no shuffles. Any K up to
// kTileMaxK (tiles.h), any inner size: one kernel, no case per K.
template <typename scalar_t, int VEC, bool HAS_Q>
__global__ void __launch_bounds__(kThreads) reduce_tiles_kernel(
    ReduceArgs a, int64_t slices_per_tile) {
  using opmath_t = at::opmath_type<scalar_t>;
  IWAE_SHARED(opmath_t, tile, kTileElems + kTileElems / 32);
  const auto* p = static_cast<const scalar_t*>(a.p.data);
  const auto* q = static_cast<const scalar_t*>(a.q.data);
  const opmath_t beta = static_cast<opmath_t>(a.beta);
  const int K = static_cast<int>(a.K), inner = static_cast<int>(a.inner);
  const int slice = K * inner;
  const int tk = a.vec_k ? 1 : inner, ti = a.vec_k ? K : 1; // strides in a slice
  const int64_t tiles = (a.outer + slices_per_tile - 1) / slices_per_tile;
  // The loop bound is the block's: its barriers are reached by every thread.
  for (int64_t tl = blockIdx.x; tl < tiles; tl += gridDim.x) {
    const int64_t o0 = tl * slices_per_tile;
    const int n_sl = static_cast<int>(std::min<int64_t>(slices_per_tile, a.outer - o0));
    const int n = n_sl * slice;
    const int64_t base = o0 * slice; // slices are contiguous: so == slice
    for (int u = threadIdx.x * VEC; u < n; u += blockDim.x * VEC) {
      opmath_t x[VEC];
      load_log_w<scalar_t, opmath_t, VEC, HAS_Q>(p, q, base + u, base + u, n - u, beta, x);
#pragma unroll
      for (int c = 0; c < VEC; ++c) {
        if (VEC == 1 || c < n - u) st_shared(tile + tile_pos(u + c), x[c]);
      }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < n_sl * inner; j += blockDim.x) {
      const int sl = j / inner, i = j - sl * inner;
      const int e0 = sl * slice + i * ti;
      opmath_t m = opmath_t(-INFINITY), s = opmath_t(0), t = opmath_t(0);
      for (int k = 0; k < K; k += kRowsPerStep) {
        const int n_k = K - k < kRowsPerStep ? K - k : kRowsPerStep; // no odr-use on the device
        opmath_t x[kRowsPerStep];
#pragma unroll
        for (int c = 0; c < kRowsPerStep; ++c) {
          x[c] = c < n_k ? ld_shared(tile + tile_pos(e0 + (k + c) * tk)) : opmath_t(-INFINITY);
        }
        absorb_first<opmath_t, kRowsPerStep>(m, s, t, x, n_k);
      }
      emit<scalar_t>(a, static_cast<opmath_t*>(nullptr), 0, o0 * inner + j, m, s, t);
    }
    __syncthreads(); // the next tile overwrites this one
  }
}

// Combines the K pieces' states of every output and finalises them: a warp
// per output, lane j merging pieces j, j + 32, ..., then the lanes' states
// by shuffles. Few outputs with many pieces is the case that splits K at
// all (64 outputs of 264 pieces, say), where one thread per output would
// walk its pieces one load latency after another.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) merge_kernel(
    ReduceArgs a, const at::opmath_type<scalar_t>* ws, int64_t pieces) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t n = a.outer * a.inner;
  // r is the warp's: the loop bound, and so the shuffles, are warp-uniform.
  for (int64_t r = (int64_t)blockIdx.x * kWarps + warp; r < n;
       r += (int64_t)gridDim.x * kWarps) {
    opmath_t m = opmath_t(-INFINITY), s = opmath_t(0), t = opmath_t(0);
    // kSteps pieces per step, their loads issued before the merges: a lane
    // walking 400 pieces one load latency at a time made this launch slower
    // than the launch floor (NOTES.md GPU 6). A piece past the last reads
    // as the state's identity. (One for double: with two or four, ptxas
    // spills around the double exp's calls.)
    constexpr int kSteps = sizeof(opmath_t) == 8 ? 1 : 4;
    for (int64_t j = lane; j < pieces; j += kSteps * 32) {
      opmath_t pm[kSteps], ps[kSteps], pt[kSteps];
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        const int64_t ju = j + u * 32;
        const bool in = kSteps == 1 || ju < pieces; // one step: the loop's own test
        pm[u] = in ? ld_global(ws + ju * n + r) : opmath_t(-INFINITY);
        ps[u] = in ? ld_global(ws + (pieces + ju) * n + r) : opmath_t(0);
        pt[u] = in ? ld_global(ws + (2 * pieces + ju) * n + r) : opmath_t(0);
      }
#pragma unroll
      for (int u = 0; u < kSteps; ++u) merge2(m, s, t, pm[u], ps[u], pt[u]);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      const opmath_t m2 = __shfl_xor_sync(0xffffffffu, m, off);
      const opmath_t s2 = __shfl_xor_sync(0xffffffffu, s, off);
      const opmath_t t2 = __shfl_xor_sync(0xffffffffu, t, off);
      merge2(m, s, t, m2, s2, t2);
    }
    if (lane == 0) emit<scalar_t>(a, static_cast<opmath_t*>(nullptr), 0, r, m, s, t);
  }
}

// A thread's position in the flat index v = (run * vecs + j) with run = (o *
// R + r): decomposed once, then advanced by the grid stride with additions
// and one compare-and-subtract per digit, so the loop has no 64-bit division
// (a long instruction sequence on the GPU, per vector).
struct RunWalker {
  int64_t o, r, j; // outer index, run within outer (k or i), vector in the run
  int64_t dj, dr, dout; // the stride in the same digits
  __device__ __forceinline__ RunWalker(int64_t v, int64_t stride, int64_t R, int64_t vecs) {
    j = v % vecs;
    const int64_t run = v / vecs;
    r = run % R, o = run / R;
    dj = stride % vecs;
    const int64_t sr = stride / vecs;
    dr = sr % R, dout = sr / R;
  }
  __device__ __forceinline__ void advance(int64_t R, int64_t vecs) {
    j += dj;
    int64_t carry = j >= vecs;
    j -= carry * vecs;
    r += dr + carry;
    carry = r >= R;
    r -= carry * R;
    o += dout + carry;
  }
};

// VEC contiguous values of T at p, the first `avail` (>= 1) real: in 16-byte
// vectors where aligned.
template <typename T, int VEC>
__device__ __forceinline__ void load_run(const T* p, int64_t avail, T (&out)[VEC]) {
  constexpr int kPer = sizeof(T) >= 16 ? 1 : 16 / sizeof(T);
  if constexpr (VEC % kPer == 0 && VEC > 1) {
    if (avail >= VEC && reinterpret_cast<uintptr_t>(p) % 16 == 0) {
#pragma unroll
      for (int c = 0; c < VEC; c += kPer) {
        const auto pk = ld_global(reinterpret_cast<const Pack<T, kPer>*>(p + c));
#pragma unroll
        for (int e = 0; e < kPer; ++e) out[c + e] = pk.v[e];
      }
      return;
    }
  }
#pragma unroll
  for (int c = 0; c < VEC; ++c) out[c] = VEC == 1 || c < avail ? ld_global(p + c) : T(0);
}

// The operands of both weights kernels, typed (the kernels bind them by name).
template <typename scalar_t>
struct WeightsOperands {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t *p, *q, *g;
  const opmath_t *shift, *log_norm; // the forward's stats
  scalar_t *out_p, *out_q;
  opmath_t beta;
};

template <typename scalar_t>
__device__ __forceinline__ WeightsOperands<scalar_t> weights_operands(const WeightsArgs& a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto* shift = static_cast<const opmath_t*>(a.stats);
  return {static_cast<const scalar_t*>(a.p.data), static_cast<const scalar_t*>(a.q.data),
          static_cast<const scalar_t*>(a.g), shift, shift + a.outer * a.inner,
          static_cast<scalar_t*>(a.out_p), static_cast<scalar_t*>(a.out_q),
          static_cast<opmath_t>(a.beta)};
}

// The log_q output of one element, w = g w~: -g w~ (kNegWeight); DReG's
// z-path corrections g w~ (w~ - 1) and -g w~ w~ (kernel_args.h). DReG always
// has log_q, so the instantiations without it only ever take -g w~; the
// other arms are outside the branch count (tests/README.md) rather than cut
// with `if constexpr`, which made ptxas spill in weights_kernel<double, 1,
// false, false> (sm_90).
template <typename opmath_t>
__device__ __forceinline__ opmath_t q_output(int mode, opmath_t w, opmath_t wn) {
  // GCOVR_EXCL_BR_START
  return mode == kNegWeight ? -w : mode == kDregSquare ? w * (wn - 1) : -w * wn;
  // GCOVR_EXCL_BR_STOP
}

// The weights of VEC elements from e (the first `avail` real) to both
// outputs (either may be null): whole 16-byte vectors, or element by element
// at the end (unrolled, so that the caller's grid-stride loop stays the
// innermost one).
template <typename scalar_t, int VEC>
__device__ __forceinline__ void store_weights(
    scalar_t* out_p, scalar_t* out_q, int64_t e, int64_t avail,
    const Pack<scalar_t, VEC>& wp, const Pack<scalar_t, VEC>& wq) {
  if (avail >= VEC) {
    if (out_p) st_global(reinterpret_cast<Pack<scalar_t, VEC>*>(out_p + e), wp);
    if (out_q) st_global(reinterpret_cast<Pack<scalar_t, VEC>*>(out_q + e), wq);
  } else {
#pragma unroll
    for (int c = 0; c < VEC; ++c) {
      if (c < avail) {
        if (out_p) st_global(out_p + e + c, wp.v[c]);
        if (out_q) st_global(out_q + e + c, wq.v[c]);
      }
    }
  }
}

// Element-wise weights over short runs stored one after another: log_p,
// log_q and both outputs dense in one layout, [outer, inner, K] for rows
// (ROWS) or [outer, K, inner] for columns, 16-byte aligned. weights_kernel
// gives every run its own vectors, so a run of K = 2 float32 elements fills 2
// of a vector's 4 lanes and keeps 8 B in flight per thread; here the tensor
// is one flat run of n elements in 16-byte vectors, a vector's elements
// spanning runs, each element taking its own output's stats and g by index
// (L1 hits: neighbouring elements share them). The flat index's digits
// (position in the fastest axis, the other inner axis, outer) are carried
// by RunWalker, with no division in the loop.
template <typename scalar_t, bool HAS_Q, bool ROWS>
__global__ void __launch_bounds__(kThreads) weights_flat_kernel(WeightsArgs a, int64_t n) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  using opmath_t = at::opmath_type<scalar_t>;
  using Lane = LaneOps<opmath_t>;
  const auto [p, q, g, shift, log_norm, out_p, out_q, beta] = weights_operands<scalar_t>(a);
  const int64_t fast = ROWS ? a.K : a.inner, mid = ROWS ? a.inner : a.K;
  const int64_t vecs = (n + VEC - 1) / VEC;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t v0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  // Digits of the element index: j along `fast`, r along `mid`, o outer.
  RunWalker at(v0 * VEC, stride * VEC, mid, fast);
  for (int64_t v = v0; v < vecs; v += stride, at.advance(mid, fast)) {
    const int64_t e = v * VEC, avail = n - e;
    opmath_t x[VEC];
    load_log_w<scalar_t, opmath_t, VEC, HAS_Q>(p, q, e, e, avail, beta, x);
    // Every element's output index first (a partial last vector repeats its
    // last element's, in bounds), then all of their stats and g loaded at
    // once: a thread has the stats of a whole vector in flight with its data.
    int64_t j = at.j, r = at.r, o = at.o;
    int64_t row[VEC], gi[VEC];
#pragma unroll
    for (int c = 0; c < VEC; ++c) {
      const int64_t i = ROWS ? r : j;
      row[c] = o * a.inner + i;
      gi[c] = o * a.g_so + i * a.g_si;
      // The next element's digits (kept at the last one past the end).
      const int64_t step = c + 1 < avail;
      j += step;
      const int64_t cj = j == fast;
      j -= cj * fast;
      r += cj;
      const int64_t cr = r == mid;
      r -= cr * mid;
      o += cr;
    }
    opmath_t sh[VEC], ln[VEC], gv[VEC];
#pragma unroll
    for (int c = 0; c < VEC; ++c) {
      sh[c] = ld_global(shift + row[c]);
      ln[c] = ld_global(log_norm + row[c]);
      gv[c] = g ? static_cast<opmath_t>(ld_global(g + gi[c])) : opmath_t(1);
    }
    Pack<scalar_t, VEC> wp, wq;
#pragma unroll
    for (int c = 0; c < VEC; ++c) {
      const opmath_t wn = Lane::weight(x[c] - sh[c], ln[c]);
      const opmath_t w = g ? wn * gv[c] : wn;
      wp.v[c] = static_cast<scalar_t>(w);
      wq.v[c] = static_cast<scalar_t>(q_output(a.mode, w, wn));
    }
    store_weights(out_p, out_q, e, avail, wp, wq);
  }
}

// The weights of rows that fit a 16-byte vector (K divides VEC; dense
// [outer, inner, K], 16-byte aligned), with no saved stats: each vector
// holds VEC / K whole rows, so a thread has all of a row in registers and
// takes its max, sum and weights there. The forward then writes no stats
// and the backward reads none: 16 of the 72 bytes per example of a float32
// K = 2 training step with log_q (benchmarks/NOTES.md, GPU 4). One
// exponential per element, as the stats path has, and one division; the
// -inf rules are online_lse.h's: an all -inf row (s = 0) gets weight 0, a
// NaN makes its row's weights NaN, a +inf gives NaN there and 0 at the
// row's other samples, as weight() does with log_norm = +inf.
//
// One vector's rows: x holds its log-weights (lanes at or past `avail`
// -inf), e its first element, K = 2^log2k; the rows' g at g + row * g_step.
template <typename scalar_t, typename opmath_t, int VEC>
__device__ __forceinline__ void rows_vector_weights(
    const WeightsArgs& a, const opmath_t (&x)[VEC], int64_t e, int64_t avail, int log2k,
    const scalar_t* g, int64_t g_step, scalar_t* out_p, scalar_t* out_q) {
  using Lane = LaneOps<opmath_t>;
  const int K = 1 << log2k;
  // Each lane's row max (NaN ignored, as max_of does), then the row's by
  // butterflies within its K lanes: every lane of a row ends with the same
  // max and, summed the same way, the same sum.
  opmath_t m[VEC], ex[VEC], s[VEC];
#pragma unroll
  for (int c = 0; c < VEC; ++c) m[c] = Lane::max(x[c], opmath_t(-INFINITY));
#pragma unroll
  for (int w = 1; w < VEC; w *= 2) {
    if (w < K) {
      opmath_t t[VEC];
#pragma unroll
      for (int c = 0; c < VEC; ++c) t[c] = Lane::max(m[c ^ w], m[c]);
#pragma unroll
      for (int c = 0; c < VEC; ++c) m[c] = t[c];
    }
  }
  // A row holding +inf has shift 0, and its finite samples could overflow:
  // they take exp(-inf) = 0, so that the +inf one gets inf / inf = NaN and
  // the others 0, as weight() gives with log_norm = +inf.
#pragma unroll
  for (int c = 0; c < VEC; ++c) {
    const bool below_inf = m[c] == opmath_t(INFINITY) && x[c] < opmath_t(INFINITY);
    s[c] = ex[c] = Lane::exp(below_inf ? opmath_t(-INFINITY) : x[c] - Lane::shift(m[c]));
  }
#pragma unroll
  for (int w = 1; w < VEC; w *= 2) {
    if (w < K) {
      opmath_t t[VEC];
#pragma unroll
      for (int c = 0; c < VEC; ++c) t[c] = s[c] + s[c ^ w];
#pragma unroll
      for (int c = 0; c < VEC; ++c) s[c] = t[c];
    }
  }
  // The row's g, loaded by its first lane and copied to the others.
  opmath_t gv[VEC];
  const int64_t row0 = e >> log2k;
#pragma unroll
  for (int c = 0; c < VEC; ++c) {
    if ((c & (K - 1)) == 0) { // the row's first lane
      gv[c] = g && c < avail ? static_cast<opmath_t>(ld_global(g + (row0 + (c >> log2k)) * g_step))
                             : opmath_t(1);
    } else {
      gv[c] = gv[c - 1];
    }
  }
  Pack<scalar_t, VEC> wp, wq;
#pragma unroll
  for (int c = 0; c < VEC; ++c) {
    const opmath_t wn = s[c] == opmath_t(0) ? opmath_t(0) : ex[c] / s[c];
    const opmath_t w = wn * gv[c];
    wp.v[c] = static_cast<scalar_t>(w);
    wq.v[c] = static_cast<scalar_t>(q_output(a.mode, w, wn));
  }
  store_weights(out_p, out_q, e, avail, wp, wq);
}

// The kernel: kRowsVecs vectors a grid stride apart per pass, all their
// loads issued before any is used (a thread keeps 2 x 16 B per operand in
// flight: one vector's were too few to reach the B200's bandwidth at
// float16, GPU-MODEL.md). The incoming gradient must be flat over the
// outputs (recomputes_stats checks): row r's at g + r * g_step.
constexpr int kRowsVecs = 2;

template <typename scalar_t, bool HAS_Q>
__global__ void __launch_bounds__(kThreads) weights_rows_kernel(
    WeightsArgs a, int64_t n, int log2k) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  using opmath_t = at::opmath_type<scalar_t>;
  // The operands of weights_operands but the stats (null here).
  const auto* p = static_cast<const scalar_t*>(a.p.data);
  const auto* q = static_cast<const scalar_t*>(a.q.data);
  const auto* g = static_cast<const scalar_t*>(a.g);
  auto* out_p = static_cast<scalar_t*>(a.out_p);
  auto* out_q = static_cast<scalar_t*>(a.out_q);
  const auto beta = static_cast<opmath_t>(a.beta);
  const int64_t g_step = a.inner == 1 ? a.g_so : a.g_si;
  const int64_t vecs = (n + VEC - 1) / VEC;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; v < vecs;
       v += kRowsVecs * stride) {
    opmath_t x[kRowsVecs][VEC];
    if ((v + (kRowsVecs - 1) * stride + 1) * VEC <= n) { // every vector whole
      load_log_w_rows<scalar_t, opmath_t, VEC, kRowsVecs, HAS_Q>(
          p, q, v * VEC, v * VEC, stride * VEC, stride * VEC, beta, x);
    } else {
#pragma unroll
      for (int u = 0; u < kRowsVecs; ++u) {
        const int64_t e = (v + u * stride) * VEC;
        load_log_w<scalar_t, opmath_t, VEC, HAS_Q>(p, q, e, e, n - e, beta, x[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kRowsVecs; ++u) {
      const int64_t e = (v + u * stride) * VEC;
      if (e < n) {
        rows_vector_weights<scalar_t, opmath_t, VEC>(
            a, x[u], e, n - e, log2k, g, g_step, out_p, out_q);
      }
    }
  }
}

// Element-wise weights over runs of `len` contiguous elements: (o, k) runs
// of the inner axis for columns, (o, i) runs of K for rows.
template <typename scalar_t, int VEC, bool HAS_Q, bool COLS>
__global__ void __launch_bounds__(kThreads) weights_kernel(
    WeightsArgs a, int64_t runs, int64_t len, int64_t vecs_per_run) {
  using opmath_t = at::opmath_type<scalar_t>;
  using Lane = LaneOps<opmath_t>;
  const auto [p, q, g, shift, log_norm, out_p, out_q, beta] = weights_operands<scalar_t>(a);
  const int64_t total = runs * vecs_per_run;
  const int64_t R = COLS ? a.K : a.inner; // runs per outer index
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t v0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  RunWalker at(v0, stride, R, vecs_per_run);
  for (int64_t v = v0; v < total; v += stride, at.advance(R, vecs_per_run)) {
    const int64_t o = at.o, j = at.j * VEC;
    int64_t poff, qoff, ooff;
    opmath_t sh[VEC], ln[VEC], gv[VEC];
    const int64_t avail = len - j;
    if constexpr (COLS) {
      const int64_t k = at.r;
      poff = o * a.p.so + k * a.p.sk + j;
      qoff = HAS_Q ? o * a.q.so + k * a.q.sk + j : 0;
      ooff = o * a.out_so + k * a.out_sk + j;
      load_run(shift + o * a.inner + j, avail, sh); // one output per column
      load_run(log_norm + o * a.inner + j, avail, ln);
      if (g) {
        scalar_t gs[VEC];
        if (a.g_si == 0) { // the expanded gradient of a .sum(): one value
          const scalar_t one = ld_global(g + o * a.g_so);
#pragma unroll
          for (int c = 0; c < VEC; ++c) gs[c] = one;
        } else {
          load_run(g + o * a.g_so + j, avail, gs);
        }
#pragma unroll
        for (int c = 0; c < VEC; ++c) gv[c] = static_cast<opmath_t>(gs[c]);
      }
    } else {
      const int64_t i = at.r, row = o * a.inner + i; // one output per row
      poff = o * a.p.so + i * a.p.si + j;
      qoff = HAS_Q ? o * a.q.so + i * a.q.si + j : 0;
      ooff = o * a.out_so + i * a.out_si + j;
      const opmath_t s1 = ld_global(shift + row), l1 = ld_global(log_norm + row);
      const opmath_t g1 = g ? static_cast<opmath_t>(ld_global(g + o * a.g_so + i * a.g_si)) : opmath_t(1);
#pragma unroll
      for (int c = 0; c < VEC; ++c) sh[c] = s1, ln[c] = l1, gv[c] = g1;
    }
    opmath_t x[VEC];
    load_log_w<scalar_t, opmath_t, VEC, HAS_Q>(p, q, poff, qoff, avail, beta, x);
    Pack<scalar_t, VEC> wp, wq;
#pragma unroll
    for (int c = 0; c < VEC; ++c) {
      const bool live = VEC == 1 || c < avail;
      const opmath_t wn = live ? Lane::weight(x[c] - sh[c], ln[c]) : opmath_t(0);
      const opmath_t w = g && live ? wn * gv[c] : wn;
      wp.v[c] = static_cast<scalar_t>(w);
      wq.v[c] = static_cast<scalar_t>(q_output(a.mode, w, wn));
    }
    if (VEC > 1 && avail >= VEC) {
      if (out_p) st_global(reinterpret_cast<Pack<scalar_t, VEC>*>(out_p + ooff), wp);
      if (out_q) st_global(reinterpret_cast<Pack<scalar_t, VEC>*>(out_q + ooff), wq);
    } else {
#pragma unroll
      for (int c = 0; c < VEC; ++c) {
        if (VEC == 1 || c < avail) {
          if (out_p) st_global(out_p + ooff + c, wp.v[c]);
          if (out_q) st_global(out_q + ooff + c, wq.v[c]);
        }
      }
    }
  }
}

// ---- host side --------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

bool aligned(const void* ptr, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

// 16-byte vectors are safe when every run (a row of K, or of the inner axis)
// starts 16-byte aligned: the base pointer aligned, and the strides that move
// between runs multiples of VEC (a stride over an axis of size 1 never moves).
bool runs_aligned(
    const void* data, int64_t so, int64_t outer, int64_t s2, int64_t n2,
    int vec) {
  return aligned(data, 16) && (outer == 1 || so % vec == 0) &&
      (n2 == 1 || s2 % vec == 0);
}

// The second stride between runs: along inner for rows, along K for columns.
template <typename Args>
bool operand_aligned(const Strided& op, const Args& g, int vec) {
  return g.vec_k ? runs_aligned(op.data, op.so, g.outer, op.si, g.inner, vec)
                 : runs_aligned(op.data, op.so, g.outer, op.sk, g.K, vec);
}

// The column kernel has no loop over grid.x: a GPU's 2^31 - 1 blocks outnumber
// any column count that fits in memory; only a toy device can refuse them.
void check_column_blocks(int64_t columns, int64_t gx, const dev::Limits& lim) {
  TORCH_CHECK(gx <= lim.max_grid_x, "iwae_fused: the column reduction over ", columns,
              " columns needs ", gx, " blocks along grid.x, more than the device's limit of ",
              lim.max_grid_x);
}

// Slices per tile for the short-slice kernel, or 0 where it does not apply.
int64_t tile_slices(const ReduceArgs& a, int vec) {
  const int64_t tk = a.vec_k ? 1 : a.inner, ti = a.vec_k ? a.K : 1;
  const int64_t strides[2][3] = {{a.p.so, a.p.sk, a.p.si}, {a.q.so, a.q.sk, a.q.si}};
  return iwae_fused::cuda::tile_slices(a.outer, a.K, a.inner, tk, ti, strides, a.q.data ? 2 : 1, vec);
}

template <typename scalar_t, int VEC, bool HAS_Q>
void launch_tiles(const ReduceArgs& a, int64_t slices_per_tile) {
  const int64_t tiles = ceil_div(a.outer, slices_per_tile);
  dev::launch<reduce_tiles_kernel<scalar_t, VEC, HAS_Q>>(
      dim3(std::min<int64_t>(tiles, dev::limits().max_grid_x)), dim3(kThreads), a,
      slices_per_tile);
}

// How many pieces to cut each row's K into, for `blocks` row blocks against
// `target` resident slots (one wave), at most `most`: below one wave, as many
// as fill it (rounded down: a second, partial wave would run with a fraction
// of the bytes in flight; benchmarks/GPU-MODEL.md). Between one and
// kTailWaves waves, the fewest that leave a last wave at least half full or
// make kTailWaves waves: a last wave of a few blocks is the model's
// tail-wave limiter (NOTES.md GPU 3). Past that, none. One function, not per
// kernel instantiation.
int64_t row_pieces(int64_t blocks, int64_t target, int64_t most) {
  if (blocks < target) return std::max<int64_t>(1, std::min(target / blocks, most));
  if (blocks >= kTailWaves * target) return 1;
  for (int64_t p = 1; p <= most; ++p) {
    const int64_t total = blocks * p, last = total % target;
    if (total >= kTailWaves * target || last == 0 || 2 * last >= target) return p;
  }
  return 1;
}

template <typename scalar_t, int VEC, bool HAS_Q>
void launch_reduce(const ReduceArgs& a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const dev::Limits lim = dev::limits();
  const int64_t n_out = a.outer * a.inner;
  // Few outputs split K into as many pieces as one wave of resident blocks
  // holds (rounded down: a second, partial wave would run with a fraction of
  // the bytes in flight; benchmarks/GPU-MODEL.md).
  auto wave = [&](int resident) { return (int64_t)lim.sm_count * resident; };
  const int64_t max_pieces = std::min<int64_t>(4096, lim.max_grid_y);
  int64_t pieces = 1, kchunk = a.K;
  dim3 grid, block;
  if (a.vec_k) {
    const bool warp_rows = a.K <= kWarpRowMaxK;
    const int64_t per_block = warp_rows ? kThreads / 32 : 1;
    const int64_t blocks = ceil_div(n_out, per_block);
    const int64_t tpr = warp_rows ? 32 : kThreads;
    const int64_t target_blocks = wave(
        warp_rows ? dev::resident_blocks<reduce_rows_kernel<scalar_t, VEC, 32, HAS_Q>>(kThreads)
                  : dev::resident_blocks<reduce_rows_kernel<scalar_t, VEC, kThreads, HAS_Q>>(kThreads));
    // At least a few vectors per thread in every piece.
    const int64_t min_chunk = tpr * VEC * 8;
    pieces = row_pieces(blocks, target_blocks, std::min(a.K / min_chunk, max_pieces));
    kchunk = ceil_div(ceil_div(a.K, pieces), VEC) * VEC; // keeps pieces aligned
    pieces = ceil_div(a.K, kchunk);
    grid = dim3(std::min<int64_t>(blocks, lim.max_grid_x), pieces);
    block = dim3(kThreads);
  } else {
    const int64_t vec_cols = ceil_div(a.inner, VEC);
    const int64_t gz = std::min<int64_t>(a.outer, lim.max_grid_z); // the kernel loops over the rest
    const int64_t target_blocks = wave(dev::resident_blocks<reduce_cols_kernel<scalar_t, VEC, HAS_Q>>(kThreads));
    // 16-byte vectors: the columns split evenly over as few blocks of at most
    // 32 threads per row as needed (25 -> 25, 80 -> 3 x 27), so no lane idles
    // for a power-of-two block (a warp then spans two sample rows, each a
    // whole number of sectors). Where those blocks are fewer than a wave,
    // narrower ones (down to kMinColLanes threads, 128 bytes of a row; an
    // even count) fill it before K is split: no workspace and no merge launch (NOTES.md
    // GPU 5). Scalar loads keep a power of two: a warp spanning two rows of
    // 2-byte elements would touch twice the sectors.
    int tx = 1;
    if (VEC > 1) {
      const int64_t widest = ceil_div(vec_cols, 32);
      int64_t col_blocks = widest;
      if (widest * gz < target_blocks) {
        const int64_t most = std::min<int64_t>(vec_cols / kMinColLanes, lim.max_grid_x);
        col_blocks = std::clamp<int64_t>(target_blocks / gz, widest, std::max(widest, most));
      }
      tx = static_cast<int>(ceil_div(vec_cols, col_blocks));
      // Narrowed blocks take an even width: each block's share of a row is
      // then whole 32-byte sectors (an odd one, 11 x 16 B, would split a
      // sector with its neighbour, and its warps touch one sector more per
      // row); the block count only drops.
      tx += col_blocks > widest ? tx & 1 : 0;
    } else {
      while (tx < 32 && tx < vec_cols) tx *= 2;
    }
    const int ty = kThreads / tx;
    const int64_t gx = ceil_div(vec_cols, tx);
    check_column_blocks(a.inner, gx, lim);
    const int64_t blocks = gx * gz;
    if (blocks < target_blocks) {
      const int64_t min_chunk = (int64_t)ty * kRowsPerStep * 4;
      pieces = std::clamp<int64_t>(std::min(target_blocks / blocks, a.K / min_chunk), 1, max_pieces);
    }
    kchunk = ceil_div(a.K, pieces);
    pieces = ceil_div(a.K, kchunk);
    grid = dim3(gx, pieces, gz);
    block = dim3(tx, ty);
  }
  at::Tensor ws;
  opmath_t* ws_ptr = nullptr;
  if (pieces > 1) {
    ws = dev::workspace(3 * pieces * n_out, c10::CppTypeToScalarType<opmath_t>::value);
    ws_ptr = ws.mutable_data_ptr<opmath_t>();
  }
  if (a.vec_k) {
    if (a.K <= kWarpRowMaxK) {
      dev::launch<reduce_rows_kernel<scalar_t, VEC, 32, HAS_Q>>(grid, block, a, kchunk, ws_ptr);
    } else {
      dev::launch<reduce_rows_kernel<scalar_t, VEC, kThreads, HAS_Q>>(
          grid, block, a, kchunk, ws_ptr);
    }
  } else {
    dev::launch<reduce_cols_kernel<scalar_t, VEC, HAS_Q>>(grid, block, a, kchunk, ws_ptr);
  }
  if (pieces > 1) {
    const int64_t blocks = std::min<int64_t>(ceil_div(n_out, kThreads / 32), lim.max_grid_x);
    dev::launch<merge_kernel<scalar_t>>(
        dim3(blocks), dim3(kThreads), a, static_cast<const opmath_t*>(ws_ptr), pieces);
  }
}

// Whether log_p, log_q and the outputs are one dense [outer, inner, K] (rows)
// or [outer, K, inner] (columns) layout: the flat kernel's condition.
// A dimension of size 1 takes any stride. (Every term is evaluated: `|` and
// `&` of bools, one condition with no branch per term.)
bool flat_dense(const WeightsArgs& a) {
  const int64_t want_k = a.vec_k ? 1 : a.inner, want_i = a.vec_k ? a.K : 1;
  auto dense = [&](int64_t so, int64_t sk, int64_t si) {
    return ((a.outer == 1) | (so == a.K * a.inner)) & ((a.K == 1) | (sk == want_k)) &
        ((a.inner == 1) | (si == want_i));
  };
  return dense(a.p.so, a.p.sk, a.p.si) & (!a.q.data | dense(a.q.so, a.q.sk, a.q.si)) &
      dense(a.out_so, a.out_sk, a.out_si);
}

// Runs shorter than this many vectors take the flat kernel where the layout
// allows: below it weights_kernel leaves lanes idle or keeps few bytes in
// flight; above it, its stats loaded once per run cost fewer instructions.
constexpr int64_t kFlatRunVectors = 4;

// Blocks of kThreads for a grid-stride loop over `items` thread work items:
// one item per thread up to 32 blocks per SM, then the loop takes more passes.
int64_t grid_stride_blocks(int64_t items) {
  const dev::Limits lim = dev::limits();
  return std::min(
      std::min<int64_t>(ceil_div(items, kThreads), (int64_t)lim.sm_count * 32), lim.max_grid_x);
}

template <typename scalar_t, bool HAS_Q>
void launch_weights_flat(const WeightsArgs& a) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  const int64_t n = a.outer * a.K * a.inner;
  const int64_t blocks = grid_stride_blocks(ceil_div(n, VEC));
  if (a.vec_k) {
    dev::launch<weights_flat_kernel<scalar_t, HAS_Q, true>>(dim3(blocks), dim3(kThreads), a, n);
  } else {
    dev::launch<weights_flat_kernel<scalar_t, HAS_Q, false>>(dim3(blocks), dim3(kThreads), a, n);
  }
}

template <typename scalar_t, bool HAS_Q>
void launch_weights_rows(const WeightsArgs& a) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  const int64_t n = a.outer * a.K * a.inner;
  const int64_t blocks = grid_stride_blocks(ceil_div(n, VEC * kRowsVecs));
  int log2k = 0; // K is a power of two (it divides VEC)
  while ((int64_t{1} << log2k) < a.K) ++log2k;
  dev::launch<weights_rows_kernel<scalar_t, HAS_Q>>(dim3(blocks), dim3(kThreads), a, n, log2k);
}

template <typename scalar_t, int VEC, bool HAS_Q>
void launch_weights(const WeightsArgs& a) {
  const int64_t runs = a.vec_k ? a.outer * a.inner : a.outer * a.K;
  const int64_t len = a.vec_k ? a.K : a.inner;
  const int64_t vecs_per_run = ceil_div(len, VEC);
  const int64_t blocks = grid_stride_blocks(runs * vecs_per_run);
  if (a.vec_k) {
    dev::launch<weights_kernel<scalar_t, VEC, HAS_Q, false>>(
        dim3(blocks), dim3(kThreads), a, runs, len, vecs_per_run);
  } else {
    dev::launch<weights_kernel<scalar_t, VEC, HAS_Q, true>>(
        dim3(blocks), dim3(kThreads), a, runs, len, vecs_per_run);
  }
}

} // namespace

void CudaKernels::reduce(const ReduceArgs& a) {
  if (a.outer * a.inner == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.dtype, "iwae_fused_reduce_cuda", [&] {
        constexpr int kVec = 16 / sizeof(scalar_t);
        const bool has_q = a.q.data != nullptr;
        if (const int64_t per_tile = tile_slices(a, kVec)) {
          // Vectors where every tile starts aligned (per_tile keeps them so).
          const bool tvec = aligned(a.p.data, 16) && (!has_q || aligned(a.q.data, 16)) &&
              (per_tile * a.K * a.inner) % kVec == 0;
          if (tvec) {
            has_q ? launch_tiles<scalar_t, kVec, true>(a, per_tile)
                  : launch_tiles<scalar_t, kVec, false>(a, per_tile);
          } else {
            has_q ? launch_tiles<scalar_t, 1, true>(a, per_tile)
                  : launch_tiles<scalar_t, 1, false>(a, per_tile);
          }
          return;
        }
        const bool vec = operand_aligned(a.p, a, kVec) &&
            (!has_q || operand_aligned(a.q, a, kVec));
        if (vec) {
          has_q ? launch_reduce<scalar_t, kVec, true>(a)
                : launch_reduce<scalar_t, kVec, false>(a);
        } else {
          has_q ? launch_reduce<scalar_t, 1, true>(a)
                : launch_reduce<scalar_t, 1, false>(a);
        }
      });
}

// Rows that fit a 16-byte vector, dense and aligned, and g flat over them:
// weights_rows_kernel's condition. A row of one element is its own row
// whatever the layout's name (vec_k is false for K = 1 over dim 0).
bool CudaKernels::recomputes_stats(const WeightsArgs& a) {
  const int64_t vec = 16 / static_cast<int64_t>(c10::elementSize(a.dtype));
  // g flat over the outputs: row r's at r * g_step (contiguous, or the
  // expanded scalar of a .sum(); incoming_grad copies most others).
  const bool g_flat = (a.inner == 1) | (a.outer == 1) | (a.g_so == a.inner * a.g_si);
  return (a.vec_k | (a.K == 1)) & (vec % a.K == 0) & flat_dense(a) & g_flat &
      aligned(a.p.data, 16) & aligned(a.q.data, 16) & aligned(a.out_p, 16) &
      aligned(a.out_q, 16);
}

void CudaKernels::weights(const WeightsArgs& a) {
  if (a.outer * a.inner * a.K == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.dtype, "iwae_fused_weights_cuda", [&] {
        constexpr int kVec = 16 / sizeof(scalar_t);
        const bool has_q = a.q.data != nullptr;
        if (!a.stats) { // not saved: the op glue checked recomputes_stats
          has_q ? launch_weights_rows<scalar_t, true>(a)
                : launch_weights_rows<scalar_t, false>(a);
          return;
        }
        auto out_ok = [&](const void* ptr) {
          return !ptr ||
              operand_aligned(Strided{ptr, a.out_so, a.out_sk, a.out_si}, a, kVec);
        };
        const bool vec = operand_aligned(a.p, a, kVec) &&
            (!has_q || operand_aligned(a.q, a, kVec)) && out_ok(a.out_p) &&
            out_ok(a.out_q);
        const int64_t len = a.vec_k ? a.K : a.inner;
        const bool flat = len < kFlatRunVectors * kVec && flat_dense(a) &&
            aligned(a.p.data, 16) && aligned(a.q.data, 16) && aligned(a.out_p, 16) &&
            aligned(a.out_q, 16);
        if (flat) {
          has_q ? launch_weights_flat<scalar_t, true>(a)
                : launch_weights_flat<scalar_t, false>(a);
        } else if (vec) {
          has_q ? launch_weights<scalar_t, kVec, true>(a)
                : launch_weights<scalar_t, kVec, false>(a);
        } else {
          has_q ? launch_weights<scalar_t, 1, true>(a)
                : launch_weights<scalar_t, 1, false>(a);
        }
      });
}

} // namespace iwae_fused::cuda
