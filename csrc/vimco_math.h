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
// others in float32). The state instead keeps the sum of the others, i.e. of
// every sample but the first argmax, apart: for j = argmax it is exactly the
// sum L_-j needs; for any other j the others' sum is 1 + (s_excl - e_j)
// (against the max), at least 1, so its rounding is relative.
//
// Every quantity that can be exponentially small is kept as a logarithm, so no
// gap between log-weights underflows into a division or a log: the others'
// sum as its own (max, sum) pair during the pass and as the log
// lo = log(sum_others / w_max) in the saved state, and the argmax's signal
// is taken as softplus(log(1 - f) - log(s_excl + f)) where s_excl or f is
// below e^-700 (directly, as log1p((1 - f) / (s_excl + f)), elsewhere:
// argmax_signal). A
// sample 720 nats above the rest (whose weights exp(-720) are denormals, and
// 0 where the CPU kernels flush denormals) gets its signal ~718 to double's
// precision, and so does one 1e4 nats above (exp(-1e4) is 0 in any format).
// Only results that are themselves below the smallest normal double (a
// weight e^-750) come out as 0. The finite log-weights' sum (for the
// geometric means) and all of the arithmetic are in double, whatever the
// input dtype.
#pragma once

#include <cmath>
#include <cstdint>

#include "global_memory.h"
#include "kernel_args.h"
#include "math_counts.h" // IWAE_COUNT_EXP / IWAE_COUNT_LOG

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
VIMCO_HD double expm1_(double x) {
  IWAE_COUNT_EXP();
  return ::expm1(x);
}
VIMCO_HD double log_(double x) {
  IWAE_COUNT_LOG();
  return ::log(x);
}
VIMCO_HD double log1p_(double x) {
  IWAE_COUNT_LOG();
  return ::log1p(x);
}

// Saved between forward and backward as kStateSize doubles per example:
// m, lo, argmax, fsum, n_ninf (store() below).
constexpr int kStateSize = 5;

// The state while samples are absorbed (and merged, across CUDA lanes and
// pieces of K). The others' sum is sum_{i != argmax} exp(x_i) = os exp(om):
// a (max, sum) pair of its own, so that it never underflows, however far
// below the max the others lie.
struct State {
  double m = -INFINITY; // max log-weight (NaN once a NaN was seen)
  double argmax = -1; // the index of its first occurrence
  double om = -INFINITY; // the others' max (-inf: no finite other)
  double os = 0; // sum of exp(x - om) over the others (0 when om = -inf)
  double fsum = 0; // sum of the finite log-weights
  double n_ninf = 0; // how many log-weights are -inf
};

// log(exp(a) + exp(b)), -inf for two -inf.
VIMCO_HD double log_add_exp(double a, double b) {
  const double hi = a > b ? a : b, lo = a > b ? b : a;
  if (hi == -INFINITY) return -INFINITY;
  return hi + log1p_(exp_(lo - hi));
}

// log(1 + exp(z)), without overflow for large z or underflow for small.
VIMCO_HD double softplus(double z) {
  return z > 0 ? z + log1p_(exp_(-z)) : log1p_(exp_(z));
}

// Adds exp(y) (y finite or +inf) to the sum os exp(om).
VIMCO_HD void add_to_others(double& om, double& os, double y) {
  if (y > om) {
    os = os * exp_(om - y) + 1.0; // om = -inf: 0 * 0 + 1
    om = y;
  } else {
    os += exp_(y - om);
  }
}

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
    if (st.m != -INFINITY) add_to_others(st.om, st.os, st.m);
    st.m = x;
    st.argmax = static_cast<double>(k);
  } else {
    add_to_others(st.om, st.os, x);
  }
}

// log(sum_others / exp(m)) = log(s_excl): what the state saves. -inf when no
// other sample has a positive weight.
VIMCO_HD double log_others(const State& st) {
  if (st.om == -INFINITY) return -INFINITY;
  return (st.om - st.m) + log_(st.os);
}

// The IWAE bound log((1/K) sum_k w_k) from the max and lo: -inf when no
// weight is positive, +inf with a +inf log-weight.
VIMCO_HD double bound(double m, double lo, int64_t K) {
  if (m == -INFINITY || m == INFINITY) return m;
  return m + log1p_(exp_(lo)) - log_(static_cast<double>(K));
}

// The argmax's signal L - L_-j = log((1 + s_excl) / (s_excl + f)) =
// log1p((1 - f) / (s_excl + f)), f the others' geometric mean against the
// max (log f = lf <= 0), in logs: softplus(log(1 - f) - log(s_excl + f)).
// Exact to a few ulp for any gap (the form with exp(lo) + f underflows to
// log(0) = -inf from ~708 nats in double, ~745 with denormals), and for a
// signal near 0 (a near-tie, 1 - f small: from -expm1).
// s_excl = exp(lo) and f = exp(lf) as the caller has them: where both are
// normal doubles (lo, lf > -700) the direct form log1p((1 - f) / (s_excl + f))
// is as exact (1 - f from -expm1, a sum of positive terms) at two calls where
// the log form takes six, which on a GPU the argmax's lane makes its whole
// warp wait for.
VIMCO_HD double argmax_signal(double lo, double lf, double s_excl, double f) {
  lf = lf < 0.0 ? lf : 0.0; // the others' mean, rounded above the max
  if (lo > -700.0 && lf > -700.0) return log1p_(-expm1_(lf) / (s_excl + f));
  // Here lf <= lo - log(K - 1) <= -700 (a geometric mean is at most the
  // arithmetic one) or lf = -inf, so log(1 - f) = log1p(-f) has no
  // cancellation (f < 1e-304).
  return softplus(log1p_(-exp_(lf)) - log_add_exp(lo, lf));
}

VIMCO_HD double argmax_signal(double lo, double lf) {
  return argmax_signal(lo, lf, exp_(lo), exp_(lf));
}

// What the forward saves per example, as kStateSize doubles (store(), load()).
struct Saved {
  double m; // the max log-weight
  double lo; // log_others()
  double argmax, fsum, n_ninf; // as in State
};

// For sample j with log-weight x: its normalised weight w and its learning
// signal L - L_-j, from the saved state. An example with no positive weight
// gives 0 and 0; a NaN, or a +inf log-weight, gives NaN.
VIMCO_HD void signal(const Saved& sv, int64_t K, double x, int64_t j, double& w, double& sig) {
  const double m = sv.m, lo = sv.lo;
  if (m != m || x != x || m == INFINITY) {
    w = sig = NAN;
    return;
  }
  if (m == -INFINITY) {
    w = sig = 0.0;
    return;
  }
  const double s_excl = exp_(lo);
  const double S = 1.0 + s_excl; // sum_k exp(x_k - m)
  const bool x_ninf = x == -INFINITY;
  const double e = x_ninf ? 0.0 : exp_(x - m);
  w = e / S;
  // log f_-j - m: the mean of the others' log-weights against the max; -inf
  // when one of the others is -inf (their geometric mean is then 0).
  double lf = -INFINITY;
  if (sv.n_ninf - (x_ninf ? 1.0 : 0.0) == 0.0) {
    lf = (sv.fsum - (x_ninf ? 0.0 : x)) / static_cast<double>(K - 1) - m;
  }
  const double f = exp_(lf);
  if (static_cast<double>(j) == sv.argmax) {
    sig = argmax_signal(lo, lf, s_excl, f);
  } else {
    // L_-j's sum is S - e + f, S >= 1 + e: the signal is -log1p((f - e) / S)
    // with (f - e) / S >= -1/2, which keeps the signal's relative precision
    // even when it is 1e-14 next to bounds of 60 nats (the difference of two
    // logs would keep only its absolute precision). f and e underflow only
    // where the signal itself is below the smallest normal double.
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
    st.m = o.m, st.argmax = o.argmax, st.om = o.om, st.os = o.os;
    return;
  }
  const bool other_leads = o.m > st.m || (o.m == st.m && o.argmax < st.argmax);
  const State& lead = other_leads ? o : st;
  const State& rest = other_leads ? st : o;
  // lead's others, plus all of rest's samples: its others, then its argmax.
  double om = lead.om, os = lead.os;
  if (rest.om != -INFINITY) {
    if (rest.om > om) {
      os = os * exp_(om - rest.om) + rest.os;
      om = rest.om;
    } else {
      os += rest.os * exp_(rest.om - om);
    }
  }
  add_to_others(om, os, rest.m);
  st.m = lead.m, st.argmax = lead.argmax, st.om = om, st.os = os;
}

// The i-th saved word of a state (i < kStateSize): m, lo, argmax, fsum, n_ninf.
VIMCO_HD double stored_word(const State& st, int i) {
  return i == 0 ? st.m : i == 1 ? log_others(st) : i == 2 ? st.argmax
      : i == 3 ? st.fsum : st.n_ninf;
}

VIMCO_HD void store(const State& st, double* base, int64_t n, int64_t idx) {
  for (int i = 0; i < kStateSize; ++i) st_global(base + i * n + idx, stored_word(st, i));
}

VIMCO_HD Saved load_saved(const double* base, int64_t n, int64_t idx) {
  return Saved{ld_global(base + idx), ld_global(base + n + idx),
               ld_global(base + 2 * n + idx), ld_global(base + 3 * n + idx),
               ld_global(base + 4 * n + idx)};
}

// A saved state, to merge with others (CUDA's pieces of K): the others' sum
// as exp(m + lo) times 1 (rounded once, to lo's ulp).
VIMCO_HD State load(const double* base, int64_t n, int64_t idx) {
  const Saved sv = load_saved(base, n, idx);
  State st;
  st.m = sv.m, st.argmax = sv.argmax, st.fsum = sv.fsum, st.n_ninf = sv.n_ninf;
  if (sv.lo != -INFINITY) st.om = sv.m + sv.lo, st.os = 1.0;
  return st;
}

// Every field of a state through f (CUDA's shuffles).
template <typename F>
VIMCO_HD State map_fields(const State& s, F f) {
  State o;
  o.m = f(s.m), o.argmax = f(s.argmax), o.om = f(s.om), o.os = f(s.os);
  o.fsum = f(s.fsum), o.n_ninf = f(s.n_ninf);
  return o;
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
  st_global(static_cast<scalar_t*>(a.out) + r, bound(st.m, log_others(st), a.K));
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
  const Saved st = load_saved(a.state, n, r);
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
  const Saved st = load_saved(a.state, n, r);
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
