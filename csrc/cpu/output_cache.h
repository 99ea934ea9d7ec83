// A caching allocator for the CPU backend's outputs (gradients, bounds, the
// stats saved for the backward, normalised weights), all of which a kernel
// overwrites completely.
//
// torch's CPU allocator hands a large freed block back to the OS: glibc maps
// blocks above its mmap threshold (at most 32 MB) and unmaps them on free,
// and trims its heap. A training step allocates fresh gradients every step,
// so every step the OS faults in and zeroes their pages before the kernel
// writes them, which on the machines we measured costs as much as the kernel
// itself (benchmarks/NOTES.md CPU 20). Like the CUDA caching allocator, this
// one keeps freed blocks and hands them out again for the same size, already
// mapped. Blocks below kMinCachedBytes go to torch's allocator as before.
//
// The free blocks are bounded by a budget (1 GiB unless
// IWAE_FUSED_CPU_CACHE_MB says otherwise; 0 turns caching off), the oldest
// freed block released first; empty_cache() releases them all.
#pragma once

#include <c10/core/Allocator.h>

#include <cstddef>
#include <cstdint>

namespace iwae_fused::cpu {

struct OutputCacheStats {
  int64_t budget_bytes = 0; // free blocks kept at most
  int64_t cached_bytes = 0; // free blocks kept now
  int64_t live_bytes = 0; // blocks held by tensors now
  int64_t hits = 0; // allocations served from a free block
  int64_t misses = 0; // allocations that took new memory
};

// The allocator for outputs the kernels overwrite completely; process-wide,
// thread-safe, never destroyed (tensors may outlive static destructors).
c10::Allocator* output_allocator();

// Returns every free block to the system; blocks held by tensors stay.
void empty_cache();

OutputCacheStats output_cache_stats();

} // namespace iwae_fused::cpu
