// What a backend's kernels are given: plain pointers, sizes and strides in
// the [outer, K, inner] geometry of plan.h. Shared by the CPU and CUDA kernels
// so the op glue (ops_glue.h) fills them once for both.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace iwae_fused {

// WeightsArgs::mode values.
enum WeightsMode : int { kNegWeight = 0, kDregSquare = 1, kDregRws = 2 };

// An operand in the [outer, K, inner] geometry; strides in elements.
struct Strided {
  const void* data = nullptr;
  int64_t so = 0, sk = 0, si = 0;
};

// log_w = beta * (log_p - log_q) (log_q absent: beta * log_p), reduced over
// K; out = (log(sum exp) - log K) / beta. beta = 1 - alpha of the Renyi bound
// (1 for IWAE; never 0, which the op glue handles without these kernels).
struct ReduceArgs {
  c10::ScalarType dtype; // of log_p, log_q and out
  int64_t outer, K, inner;
  bool vec_k; // rows (sk == 1) or columns (si == 1)
  Strided p, q; // q.data == nullptr: no log_q
  double beta = 1.0;
  void* out = nullptr; // dtype, [outer * inner]: log(mean exp), or null
  // opmath, [2, outer * inner], or null: per output the shift of the online
  // state (its max, or 0 if infinite) and log_norm = log(sum exp(log_w -
  // shift)), +inf for an all -inf slice (online_lse.h). Kept apart because
  // their sum, rounded, loses the weights' precision when |log_w| is large
  // (1e4 in float32 rounds to 1e-3).
  void* stats = nullptr;
  // Store log(s) itself (-inf for an all -inf slice) instead of log_norm:
  // the mergeable state of logsumexp_stats, where an empty chunk must read
  // as the identity.
  bool plain_log_sum = false;
  // dtype, [outer * inner], or null: weight diagnostics from the same pass,
  // the effective sample size (sum w)^2 / sum w^2 and the largest normalised
  // weight (online_lse.h: diagnostics).
  void* ess = nullptr;
  void* max_w = nullptr;
};

// Element-wise: w = g * exp((log_w - shift) - log_norm), from the stats of
// the reduction, with the -inf rules of online_lse.h; writes out_p = w and
// out_q = -w (either may be null).
struct WeightsArgs {
  c10::ScalarType dtype; // of log_p, log_q, g, out_p and out_q
  int64_t outer, K, inner;
  bool vec_k;
  Strided p, q;
  double beta = 1.0; // log_w = beta * (log_p - log_q), as in ReduceArgs
  // What out_q holds, with w the normalised weight: kNegWeight: -g w (the
  // gradient for log_q); DReG's z-path corrections g (t(w) - w) for
  // kDregSquare (t = w^2, IWAE-DReG) and kDregRws (t = w - w^2, RWS-DReG).
  int mode = 0;
  // The incoming gradient, dtype, one per output: g[o * g_so + i * g_si]
  // (g_si is 0 or 1 for columns); null means g = 1. Strided so that the
  // expanded gradient of a .sum() or .mean() is read in place.
  const void* g = nullptr;
  int64_t g_so = 0, g_si = 0;
  const void* stats = nullptr; // opmath, [2, outer * inner], see ReduceArgs
  void* out_p = nullptr;
  void* out_q = nullptr;
  int64_t out_so = 0, out_sk = 0, out_si = 0; // shared by out_p and out_q
};

} // namespace iwae_fused

namespace iwae_fused {

// VIMCO (vimco_math.h): the forward writes the bound and a [kStateSize,
// outer * inner] double state; the backward reads it and writes
// out_p = g * w and out_q = g * (signal - w) per sample. General strides:
// the per-example work is a loop over K.
struct VimcoArgs {
  c10::ScalarType dtype;
  int64_t outer, K, inner;
  Strided p, q;
  void* out = nullptr;
  double* state = nullptr; // forward writes, backward reads
  const void* g = nullptr;
  int64_t g_so = 0, g_si = 0;
  void* out_p = nullptr;
  void* out_q = nullptr;
  int64_t out_so = 0, out_sk = 0, out_si = 0;
};

} // namespace iwae_fused
