// Gradients written past the cache: non-temporal stores where a backward's
// memory footprint exceeds half the last-level cache (NOTES.md CPU 36, 39).
// Included by kernels_impl.h inside one instruction set's compilation; the
// cache size comes from stream_stores.cpp, compiled once.
//
// An ordinary store first reads its line into the cache (read for
// ownership): a weights pass that reads log_w and writes its gradient moves
// three streams, not two, and the pair form with both gradients six, not
// four. Where the call's operands and gradients together outgrow the
// last-level cache, the gradient is mostly gone from it when the next
// operation reads it, so that read buys little, and a non-temporal store
// writes whole lines without it. Below that size streaming would lose the
// cached copy: on the 2-core Xeon of NOTES.md, writing and then reading 16
// MB took 1.5x as long streamed, 200 MB 0.8x. The cache also holds
// whatever else runs, and not every line of a footprint near its size
// survives until the next operation: there a training step over short
// rows whose gradient is read again lost streamed at 20-128 MB
// (1.05-1.10x) and gained at 256 MB (0.84x) of a reported 300 MB, hence
// half the cache.
#pragma once

#include <cstdint>

#include "kernel_api.h" // last_level_cache_bytes()

namespace iwae_fused::cpu {
inline namespace CPU_CAPABILITY {

// Whether a weights pass over n elements of elem_size bytes, reading
// `reads` full-size operands and writing `writes` full-size gradients,
// should write them with non-temporal stores.
inline bool streams_gradients(
    int64_t n, int64_t elem_size, int64_t reads, int64_t writes) {
  return writes > 0 && n * elem_size * (reads + writes) > last_level_cache_bytes() / 2;
}

// Orders a thread's non-temporal stores before what follows (the end of a
// parallel chunk, after which another thread may read them): they are
// weakly ordered, and only a fence guarantees they are visible.
inline void fence_streams(bool streamed) {
#if defined(__x86_64__) || defined(_M_X64)
  if (streamed) _mm_sfence();
#else
  (void)streamed;
#endif
}

} // namespace CPU_CAPABILITY
} // namespace iwae_fused::cpu
