// Short slices through shared memory, for every kernel that reduces over K:
// when K is small and each outer slice (K x inner elements) is contiguous and
// the slices follow one another, a block reads a tile of whole slices with
// coalesced loads into shared memory, then a thread per output works on its
// K values from there (kernels_cuda.cu's reduce_tiles_kernel says why).
#pragma once

#include <cstdint>

namespace iwae_fused::cuda {

constexpr int kTileElems = 4096; // values per tile (16 KB in float, 32 KB in double)
constexpr int kTileMaxK = 64; // longer slices keep the warp/block kernels

// Tile position of element e, one word of padding per 32: thread j reading
// e = j * K + k hits distinct banks for every K up to 32 (2-way at K = 64).
__device__ __forceinline__ int tile_pos(int e) {
  return e + (e >> 5);
}

// Slices per tile, or 0 where tiles do not apply: K up to kTileMaxK, a slice
// fitting a tile, and the operands' slices contiguous (so == K * inner) with
// strides (sk, si) == (tk, ti) inside a slice. The count is a multiple of
// `align` (vec over the slice size's common factor), so every tile starts
// vec-aligned.
inline int64_t tile_slices(int64_t outer, int64_t K, int64_t inner, int64_t tk, int64_t ti,
                           const int64_t (*strides)[3], int n_ops, int64_t vec) {
  const int64_t slice = K * inner;
  if (K > kTileMaxK || slice > kTileElems) return 0;
  for (int op = 0; op < n_ops; ++op) {
    const int64_t so = strides[op][0], sk = strides[op][1], si = strides[op][2];
    if (!((outer == 1 || so == slice) && (K == 1 || sk == tk) && (inner == 1 || si == ti))) {
      return 0;
    }
  }
  int64_t n = kTileElems / slice; // a thread may own several outputs
  int64_t g = vec, b = slice; // gcd(slice, vec)
  while (b) {
    const int64_t t = g % b;
    g = b, b = t;
  }
  const int64_t align = vec / g;
  if (n >= align) n -= n % align;
  return n;
}

} // namespace iwae_fused::cuda
