// VIMCO on CUDA, with the per-example math of ../vimco_math.h (shared with
// the CPU kernels: a mergeable state per example, then every sample's
// leave-one-out signal from it in O(1)).
//
// Forward, by layout, so that a warp's loads are always coalesced:
//  * short contiguous rows (K <= 64, tiles.h): a block reads a tile of whole
//    rows into shared memory (coalesced loads, every lane busy), then a
//    thread per example runs the state over its row there and writes the
//    bound and the state with its neighbours (coalesced stores).
//  * other rows with contiguous samples (sk == 1): a warp per
//    example, lane j absorbing samples j, j + 32, ..., the 32 states merged
//    by shuffles. With too few examples to fill the GPU (B = 1 with a large
//    K), gridDim.y splits K and vimco_merge_kernel combines the pieces.
//  * otherwise (e.g. [K, B] over dim 0): a thread per example, neighbouring
//    threads reading neighbouring examples.
// Backward: a thread per sample in memory order, each reading its example's
// state: coalesced in both layouts, and parallel for any B.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <algorithm>

#include "../vimco_math.h"
#include "device_api.h"
#include "kernel_api.h"
#include "tiles.h"

namespace iwae_fused::cuda {
namespace {

constexpr int kVimcoThreads = 128;
constexpr int kVimcoWarps = kVimcoThreads / 32;

template <typename scalar_t>
__global__ void __launch_bounds__(kVimcoThreads) vimco_cols_kernel(VimcoArgs a) {
  for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < a.outer * a.inner;
       r += (int64_t)gridDim.x * blockDim.x) {
    vimco_math::forward_example<scalar_t>(a, r);
  }
}

__device__ __forceinline__ vimco_math::State shfl_state(const vimco_math::State& s, int off) {
  return vimco_math::map_fields(
      s, [off](double v) { return __shfl_xor_sync(0xffffffffu, v, off); });
}

template <typename scalar_t>
__global__ void __launch_bounds__(kVimcoThreads) vimco_tiles_kernel(
    VimcoArgs a, int64_t rows_per_tile) {
  IWAE_SHARED(double, tile, kTileElems + kTileElems / 32);
  const auto* p = static_cast<const scalar_t*>(a.p.data);
  const auto* q = static_cast<const scalar_t*>(a.q.data);
  const int K = static_cast<int>(a.K);
  const int64_t n = a.outer * a.inner;
  const int64_t tiles = (n + rows_per_tile - 1) / rows_per_tile;
  // The loop bound is the block's: its barriers are reached by every thread.
  for (int64_t tl = blockIdx.x; tl < tiles; tl += gridDim.x) {
    const int64_t r0 = tl * rows_per_tile;
    const int rows = static_cast<int>(std::min<int64_t>(rows_per_tile, n - r0));
    const int64_t base = r0 * K; // rows are contiguous and consecutive
    for (int u = threadIdx.x; u < rows * K; u += blockDim.x) {
      st_shared(tile + tile_pos(u), static_cast<double>(ld_global(p + base + u)) -
                                        static_cast<double>(ld_global(q + base + u)));
    }
    __syncthreads();
    for (int j = threadIdx.x; j < rows; j += blockDim.x) {
      vimco_math::State st;
      for (int k = 0; k < K; ++k) vimco_math::absorb(st, ld_shared(tile + tile_pos(j * K + k)), k);
      vimco_math::finish<scalar_t>(a, st, r0 + j);
    }
    __syncthreads(); // the next tile overwrites this one
  }
}

// ws, when K is split: the pieces' states, [piece][kStateSize][example].
template <typename scalar_t>
__global__ void __launch_bounds__(kVimcoThreads) vimco_rows_kernel(
    VimcoArgs a, int64_t kchunk, double* ws) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t n = a.outer * a.inner;
  const int64_t k0 = blockIdx.y * kchunk, k1 = std::min<int64_t>(a.K, k0 + kchunk);
  // r is the warp's: the loop bound, and so the shuffles, are warp-uniform.
  for (int64_t r = (int64_t)blockIdx.x * kVimcoWarps + warp; r < n;
       r += (int64_t)gridDim.x * kVimcoWarps) {
    const int64_t o = r / a.inner, i = r - o * a.inner;
    vimco_math::State st;
    for (int64_t k = k0 + lane; k < k1; k += 32) {
      vimco_math::absorb(st, vimco_math::log_w_at<scalar_t>(a, o, k, i), k);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) vimco_math::merge(st, shfl_state(st, off));
    if (ws) { // every lane holds the merged state: five lanes store a word each
      // (stored_word is a select chain, not an array indexed by lane: that
      // would go to local memory)
      if (lane < vimco_math::kStateSize) {
        st_global(ws + (blockIdx.y * vimco_math::kStateSize + lane) * n + r,
                  vimco_math::stored_word(st, lane));
      }
    } else if (lane == 0) {
      vimco_math::finish<scalar_t>(a, st, r);
    }
  }
}

// A warp per example: lane j merges pieces j, j + 32, ..., then the lanes'
// states merge by shuffles (few examples with many pieces is the case that
// splits K at all, so one thread per example would leave the warp idle).
template <typename scalar_t>
__global__ void __launch_bounds__(kVimcoThreads) vimco_merge_kernel(
    VimcoArgs a, const double* ws, int64_t pieces) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t n = a.outer * a.inner;
  for (int64_t r = (int64_t)blockIdx.x * kVimcoWarps + warp; r < n;
       r += (int64_t)gridDim.x * kVimcoWarps) {
    vimco_math::State st;
    for (int64_t p = lane; p < pieces; p += 32) {
      vimco_math::merge(st, vimco_math::load(ws + p * vimco_math::kStateSize * n, n, r));
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) vimco_math::merge(st, shfl_state(st, off));
    if (lane == 0) vimco_math::finish<scalar_t>(a, st, r);
  }
}

// Element e in memory order: samples fastest (K_FAST, rows) or examples.
template <typename scalar_t, bool K_FAST>
__global__ void __launch_bounds__(kVimcoThreads) vimco_backward_kernel(VimcoArgs a) {
  const int64_t total = a.outer * a.K * a.inner;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t o, k, i;
    if constexpr (K_FAST) {
      const int64_t r = e / a.K;
      k = e - r * a.K, o = r / a.inner, i = r - o * a.inner;
    } else {
      const int64_t ok = e / a.inner;
      i = e - ok * a.inner, o = ok / a.K, k = ok - o * a.K;
    }
    vimco_math::backward_element<scalar_t>(a, o, k, i);
  }
}

int64_t blocks_for(int64_t items) {
  const dev::Limits lim = dev::limits();
  return std::max<int64_t>(
      1, std::min(std::min<int64_t>((items + kVimcoThreads - 1) / kVimcoThreads,
                                    (int64_t)lim.sm_count * 32),
                  lim.max_grid_x));
}

// (VIMCO has K >= 2.) The planner lays log_q out like log_p (plan.cpp,
// fits()), so log_p's unit stride with log_q's other cannot reach here; the
// test of log_q stays as the kernels' guard, outside the branch count.
bool samples_contiguous(const VimcoArgs& a) {
  return a.p.sk == 1 && a.q.sk == 1; // GCOVR_EXCL_BR_LINE
}

} // namespace

void CudaVimco::vimco_forward(const VimcoArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "vimco_cuda", [&] {
    const int64_t n = a.outer * a.inner;
    if (!samples_contiguous(a)) {
      dev::launch<vimco_cols_kernel<scalar_t>>(dim3(blocks_for(n)), dim3(kVimcoThreads), a);
      return;
    }
    // Short rows (contiguous: checked above), each following the previous one.
    auto consecutive = [&](const Strided& op) {
      return (a.inner == 1 || op.si == a.K) &&
          (a.outer == 1 || op.so == a.inner * a.K);
    };
    if (a.K <= kTileMaxK && consecutive(a.p) && consecutive(a.q)) {
      const int64_t per_tile = kTileElems / a.K, tiles = (n + per_tile - 1) / per_tile;
      dev::launch<vimco_tiles_kernel<scalar_t>>(
          dim3(std::min<int64_t>(tiles, dev::limits().max_grid_x)), dim3(kVimcoThreads), a,
          per_tile);
      return;
    }
    const dev::Limits lim = dev::limits();
    const int64_t blocks = (n + kVimcoWarps - 1) / kVimcoWarps;
    // One wave of resident blocks (rounded down), as kernels_cuda.cu's split-K.
    const int64_t target =
        (int64_t)lim.sm_count * dev::resident_blocks<vimco_rows_kernel<scalar_t>>(kVimcoThreads);
    int64_t pieces = 1;
    if (blocks < target) { // at least 8 samples per lane in every piece
      pieces = std::clamp<int64_t>(std::min(target / blocks, a.K / (32 * 8)), 1,
                                   std::min<int64_t>(4096, lim.max_grid_y));
    }
    const int64_t kchunk = (a.K + pieces - 1) / pieces;
    pieces = (a.K + kchunk - 1) / kchunk;
    const dim3 grid(std::min<int64_t>(blocks, lim.max_grid_x), pieces);
    if (pieces == 1) {
      dev::launch<vimco_rows_kernel<scalar_t>>(grid, dim3(kVimcoThreads), a, kchunk,
                                               static_cast<double*>(nullptr));
      return;
    }
    at::Tensor ws = dev::workspace(pieces * vimco_math::kStateSize * n, at::kDouble);
    double* wsp = ws.mutable_data_ptr<double>();
    dev::launch<vimco_rows_kernel<scalar_t>>(grid, dim3(kVimcoThreads), a, kchunk, wsp);
    dev::launch<vimco_merge_kernel<scalar_t>>(dim3(std::min<int64_t>(blocks, lim.max_grid_x)),
                                              dim3(kVimcoThreads), a,
                                              static_cast<const double*>(wsp), pieces);
  });
}

void CudaVimco::vimco_backward(const VimcoArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "vimco_cuda_bwd", [&] {
    const dim3 grid(blocks_for(a.outer * a.K * a.inner));
    if (samples_contiguous(a)) {
      dev::launch<vimco_backward_kernel<scalar_t, true>>(grid, dim3(kVimcoThreads), a);
    } else {
      dev::launch<vimco_backward_kernel<scalar_t, false>>(grid, dim3(kVimcoThreads), a);
    }
  });
}

} // namespace iwae_fused::cuda
