// Denormal results flushed to zero (FTZ) and denormal operands read as zero
// (DAZ) for the lifetime of a guard, on x86; a no-op elsewhere.
//
// Why: a weight more than ~87 below its slice's largest (float32) is a
// denormal or 0, and x86 cores take a microcode assist, ~100 cycles, for
// every floating-point result that underflows to a denormal: AVX-512's
// vscalefps in our exp, the diagnostics' e * e (from 43 below the max), a
// gradient's g * w. Log-weights spread over a hundred nats or more (early
// training, evaluation) made the kernels 10x slower (benchmarks/NOTES.md
// CPU 13). What is lost: weights below FLT_MIN (DBL_MIN) relative to their
// slice's largest become exactly 0, and denormal log-weights read as 0.
//
// MXCSR is per thread: the guard belongs inside each parallel chunk, and
// restores the caller's mode (PyTorch's torch.set_flush_denormal included).
// Never around a parallel region: threads created while it is set inherit
// the flush and keep it.
// Included by kernels_prelude.h before the target switch, so it compiles for
// the baseline in every translation unit.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace iwae_fused {

class FlushDenormals {
 public:
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;
#if defined(__x86_64__) || defined(_M_X64)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtzDaz); }
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFtzDaz = 0x8040; // FTZ (bit 15) | DAZ (bit 6)
  unsigned saved_;
#else
  FlushDenormals() = default;
#endif
};

} // namespace iwae_fused
