// VIMCO's per-example math (Mnih & Rezende 2016), shared by the CPU and CUDA
// kernels: one pass over the K log-weights of an example builds a state, from
// which the bound and every sample's leave-one-out learning signal follow in
// O(1) each, so all K signals cost O(K).
//
// The leave-one-out bound replaces sample j by the geometric mean of the
// others, log f_-j = mean_{i != j} log w_i:
//   L_-j = log((1/K) (sum_{i != j} w_i + f_-j)).
// Computed naively, sum_{i != j} w_i = sum_i w_i - w_j cancels catastrophically
// when w_j dominates (a sample 60 nats above the rest leaves nothing of the
// others in float32). The state instead keeps the sum *excluding the first
// argmax* (s_excl, against the max m): for j = argmax it is exactly the sum of
// the others; for any other j the others' sum is 1 + (s_excl - e_j), which is
// at least 1 (the max's own term), so its rounding is relative. The finite
// log-weights' sum (for the geometric means) and all of the arithmetic are in
// double, whatever the input dtype.
#pragma once

#include <cmath>
#include <cstdint>

#include "global_memory.h"
#include "kernel_args.h"
#include "online_lse.h" // IWAE_COUNT_EXP / IWAE_COUNT_LOG

#if defined(__CUDACC__) || defined(__HIPCC__)
#define VIMCO_HD __host__ __device__ __forceinline__
#else
#define VIMCO_HD inline
#endif

namespace iwae_fused::vimco_math {

// The math functions, counted by the emulator (online_lse.h's macros).
VIMCO_HD double exp_(double x) {
  IWAE_COUNT_EXP();
  return ::exp(x);
}
VIMCO_HD double log_(double x) {
  IWAE_COUNT_LOG();
  return ::log(x);
}
VIMCO_HD double log1p_(double x) {
  IWAE_COUNT_LOG();
  return ::log1p(x);
}

// Saved between forward and backward as kStateSize doubles per example.
constexpr int kStateSize = 5;

struct State {
  double m = -INFINITY; // max log-weight (NaN once a NaN was seen)
  double s_excl = 0; // sum of exp(x - m) over all samples but the first argmax
  double argmax = -1; // its index
  double fsum = 0; // sum of the finite log-weights
  double n_ninf = 0; // how many log-weights are -inf
};

VIMCO_HD void absorb(State& st, double x, int64_t k) {
  if (x != x || st.m != st.m) {
    st.m = NAN;
    return;
  }
  if (x == -INFINITY) {
    st.n_ninf += 1;
    return;
  }
  st.fsum += x;
  if (x > st.m) { // a new (first) argmax: the old one joins the others
    st.s_excl = st.m == -INFINITY ? 0.0 : (st.s_excl + 1.0) * exp_(st.m - x);
    st.m = x;
    st.argmax = static_cast<double>(k);
  } else {
    st.s_excl += exp_(x - st.m);
  }
}

// The IWAE bound log((1/K) sum_k w_k); -inf when no weight is positive.
VIMCO_HD double bound(const State& st, int64_t K) {
  if (st.m == -INFINITY) return -INFINITY;
  return st.m + log1p_(st.s_excl) - log_(static_cast<double>(K));
}

// For sample j with log-weight x: its normalised weight w and its learning
// signal L - L_-j. An example with no positive weight gives 0 and 0; a NaN
// gives NaN.
VIMCO_HD void signal(
    const State& st, int64_t K, double x, int64_t j, double& w, double& sig) {
  if (st.m != st.m || x != x) {
    w = sig = NAN;
    return;
  }
  if (st.m == -INFINITY) {
    w = sig = 0.0;
    return;
  }
  const double S = 1.0 + st.s_excl; // sum_k exp(x_k - m)
  const double e = x == -INFINITY ? 0.0 : exp_(x - st.m);
  w = e / S;
  double f = 0.0; // the geometric mean of the others' weights, / exp(m)
  if (st.n_ninf - (x == -INFINITY ? 1.0 : 0.0) == 0.0) {
    const double mean =
        (st.fsum - (x == -INFINITY ? 0.0 : x)) / static_cast<double>(K - 1);
    f = exp_(mean - st.m);
  }
  if (static_cast<double>(j) == st.argmax) {
    // The others' sum is s_excl itself: L - L_-j = log S - log(s_excl + f).
    sig = log_(S) - log_(st.s_excl + f);
  } else {
    // L_-j's sum is S - e + f, S >= 1 + e: the signal is -log1p((f - e) / S)
    // with (f - e) / S >= -1/2, which keeps the signal's relative precision
    // even when it is 1e-14 next to bounds of 60 nats (the difference of two
    // logs would keep only its absolute precision).
    sig = -log1p_((f - e) / S);
  }
}

// Merge the state of another set of samples (disjoint from this one's) into
// st: the result is the state of the union, whatever the order the sets were
// absorbed or merged in. Ties of the max keep the smaller index, as absorb
// keeps the first argmax.
VIMCO_HD void merge(State& st, const State& o) {
  st.fsum += o.fsum;
  st.n_ninf += o.n_ninf;
  if (st.m != st.m || o.m != o.m) {
    st.m = NAN;
    return;
  }
  if (o.m == -INFINITY) return;
  if (st.m == -INFINITY) {
    st.m = o.m, st.s_excl = o.s_excl, st.argmax = o.argmax;
    return;
  }
  const bool other_leads = o.m > st.m || (o.m == st.m && o.argmax < st.argmax);
  const State& lead = other_leads ? o : st;
  const State& rest = other_leads ? st : o;
  // The other set's samples, all of them (its argmax included), against lead's max.
  const double s = lead.s_excl + (rest.s_excl + 1.0) * exp_(rest.m - lead.m);
  st.m = lead.m, st.argmax = lead.argmax, st.s_excl = s;
}

VIMCO_HD void store(const State& st, double* base, int64_t n, int64_t idx) {
  st_global(base + idx, st.m);
  st_global(base + n + idx, st.s_excl);
  st_global(base + 2 * n + idx, st.argmax);
  st_global(base + 3 * n + idx, st.fsum);
  st_global(base + 4 * n + idx, st.n_ninf);
}

VIMCO_HD State load(const double* base, int64_t n, int64_t idx) {
  State st;
  st.m = ld_global(base + idx);
  st.s_excl = ld_global(base + n + idx);
  st.argmax = ld_global(base + 2 * n + idx);
  st.fsum = ld_global(base + 3 * n + idx);
  st.n_ninf = ld_global(base + 4 * n + idx);
  return st;
}

// One example r = (o, i) of the geometry, for both backends: the forward
// writes the bound and the state, the backward every sample's gradients.
template <typename scalar_t>
VIMCO_HD double log_w_at(const VimcoArgs& a, int64_t o, int64_t k, int64_t i) {
  const auto* p = static_cast<const scalar_t*>(a.p.data);
  const auto* q = static_cast<const scalar_t*>(a.q.data);
  return static_cast<double>(ld_global(p + o * a.p.so + k * a.p.sk + i * a.p.si)) -
      static_cast<double>(ld_global(q + o * a.q.so + k * a.q.sk + i * a.q.si));
}

// The final state of example r: saved for the backward, and its bound.
template <typename scalar_t>
VIMCO_HD void finish(const VimcoArgs& a, const State& st, int64_t r) {
  store(st, a.state, a.outer * a.inner, r);
  st_global(static_cast<scalar_t*>(a.out) + r, bound(st, a.K));
}

template <typename scalar_t>
VIMCO_HD void forward_example(const VimcoArgs& a, int64_t r) {
  const int64_t o = r / a.inner, i = r - o * a.inner;
  State st;
  for (int64_t k = 0; k < a.K; ++k) absorb(st, log_w_at<scalar_t>(a, o, k, i), k);
  finish<scalar_t>(a, st, r);
}

// Sample k of example (o, i): both gradients, from the example's saved state.
template <typename scalar_t>
VIMCO_HD void backward_element(const VimcoArgs& a, int64_t o, int64_t k, int64_t i) {
  const int64_t n = a.outer * a.inner, r = o * a.inner + i;
  const State st = load(a.state, n, r);
  const double g = static_cast<double>(
      ld_global(static_cast<const scalar_t*>(a.g) + o * a.g_so + i * a.g_si));
  double w, sig;
  signal(st, a.K, log_w_at<scalar_t>(a, o, k, i), k, w, sig);
  const int64_t off = o * a.out_so + k * a.out_sk + i * a.out_si;
  if (a.out_p) st_global(static_cast<scalar_t*>(a.out_p) + off, g * w);
  if (a.out_q) st_global(static_cast<scalar_t*>(a.out_q) + off, g * (sig - w));
}

template <typename scalar_t>
VIMCO_HD void backward_example(const VimcoArgs& a, int64_t r) {
  const int64_t n = a.outer * a.inner, o = r / a.inner, i = r - o * a.inner;
  const State st = load(a.state, n, r);
  const double g = static_cast<double>(
      ld_global(static_cast<const scalar_t*>(a.g) + o * a.g_so + i * a.g_si));
  auto* op = static_cast<scalar_t*>(a.out_p);
  auto* oq = static_cast<scalar_t*>(a.out_q);
  for (int64_t k = 0; k < a.K; ++k) {
    double w, sig;
    signal(st, a.K, log_w_at<scalar_t>(a, o, k, i), k, w, sig);
    const int64_t off = o * a.out_so + k * a.out_sk + i * a.out_si;
    if (op) st_global(op + off, g * w);
    if (oq) st_global(oq + off, g * (sig - w));
  }
}

} // namespace iwae_fused::vimco_math
