// The math every backend shares: the online log-sum-exp state, its merge, its
// finalisation and the normalised weight, with the -inf / +inf / NaN rules in
// one place so the CPU and CUDA kernels cannot drift apart.
//
// The functions are templates over a "lane" type V. For a scalar V (float,
// double) they compile for host and device; the CPU kernels instantiate them
// with at::vec::Vectorized<float|double>, for which the primitives below are
// specialised in cpu/vec_ops.h.
//
// State: (m, s) with m the running max of the log-weights seen so far and
//   s = sum_k exp(x_k - shift(m)),   shift(m) = (m is +-inf) ? 0 : m.
// Shifting by 0 rather than by an infinite max is what keeps every step free
// of inf - inf:
//   * all x = -inf: m = -inf, s = 0, and the final log gives -inf;
//   * some x = +inf: s becomes +inf, and the final value is +inf;
//   * any NaN: its term exp(NaN - shift) makes s NaN, so the slice's result
//     (and only that slice's) is NaN; the max may ignore NaN.
// A finite max shifts as usual, so |x| of 1e4 and more neither overflows nor
// loses accuracy: s stays in [1, K].
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define IWAE_HD __host__ __device__ __forceinline__
#else
#define IWAE_HD inline
#endif

#include "math_counts.h" // IWAE_COUNT_EXP / IWAE_COUNT_LOG

// Each CPU instruction set compiles this header in a namespace of its own
// (iwae_fused::AVX2, ...), as at::vec does, so that the scalar instantiations
// (absorb_max<float>, ...) of one set can never be linked into another's
// kernels, and each set inlines them into its own code. Elsewhere (CUDA, the
// op glue) it is iwae_fused::portable.
#if defined(CPU_CAPABILITY)
#define IWAE_ISA CPU_CAPABILITY
#else
#define IWAE_ISA portable
#endif

namespace iwae_fused {
inline namespace IWAE_ISA {

// ---- primitives, per lane type ---------------------------------------------
// A class template (rather than overloads) so that the vector specialisations
// in cpu/vec_ops.h are found at instantiation, whatever the include order.
template <typename V>
struct LaneOps;

template <typename T>
struct ScalarLaneOps {
  // The max of a new value x and a running max m, ignoring a NaN x: a NaN
  // reaches the result through the sum instead (exp(NaN - shift) = NaN), so
  // the running max itself never needs to carry it.
  static IWAE_HD T max(T x, T m) { return x > m ? x : m; }
  static IWAE_HD T exp(T x) {
    IWAE_COUNT_EXP();
    return std::exp(x);
  }
  static IWAE_HD T log(T x) {
    IWAE_COUNT_LOG();
    return std::log(x);
  }
  // 0 for +-inf, the value itself otherwise (NaN stays NaN).
  static IWAE_HD T shift(T m) {
    return (m == T(INFINITY) || m == -T(INFINITY)) ? T(0) : m;
  }
  // The normaliser a backward keeps: log(s), except +inf for an empty (all
  // -inf) slice, so that weight() needs no special case there: every
  // exp(d - inf) is 0, where exp(-inf + inf) would be NaN.
  static IWAE_HD T log_norm(T s) {
    if (s == T(0)) return T(INFINITY);
    IWAE_COUNT_LOG();
    return std::log(s);
  }
  // The normalised weight exp(d - log_norm), with d = x - shift(m). Taking d
  // against the shift (exact for x near the max) rather than x against a
  // rounded log-sum-exp keeps full relative precision when |x| is large.
  static IWAE_HD T weight(T d, T log_norm) {
    IWAE_COUNT_EXP();
    return std::exp(d - log_norm);
  }
};

template <>
struct LaneOps<float> : ScalarLaneOps<float> {};
template <>
struct LaneOps<double> : ScalarLaneOps<double> {};

// ---- the state, written once over any lane type ---------------------------

// The largest of N values by max's rule (NaN ignored), starting from the
// state's identity -inf: every backend takes a block's max this way, so a NaN
// anywhere in it, the first element included, never becomes the running max.
template <typename V, int N>
IWAE_HD V max_of(const V (&x)[N]) {
  V m = V(-INFINITY);
  for (int c = 0; c < N; ++c) m = LaneOps<V>::max(x[c], m);
  return m;
}

// Factor that re-expresses a sum taken against shift(m_old) against
// shift(m_new). Uses the raw m_old so an empty (-inf) state scales by
// exp(-inf) = 0 and never by 0 * exp(+large) = NaN.
template <typename V>
IWAE_HD V rescale(V m_old, V m_new) {
  return LaneOps<V>::exp(m_old - LaneOps<V>::shift(m_new));
}

// Fold a block whose largest log-weight is block_max into (m, s). Returns the
// shift the block's terms must use: s += sum exp(x - returned_shift).
template <typename V>
IWAE_HD V absorb_max(V& m, V& s, V block_max) {
  V m_new = LaneOps<V>::max(m, block_max);
  s = s * rescale(m, m_new);
  m = m_new;
  return LaneOps<V>::shift(m_new);
}

// Merge state (m2, s2) into (m1, s1). Associative and commutative up to
// rounding; an empty state (-inf, 0) is the identity.
template <typename V>
IWAE_HD void merge(V& m1, V& s1, V m2, V s2) {
  V m = LaneOps<V>::max(m1, m2);
  s1 = s1 * rescale(m1, m) + s2 * rescale(m2, m);
  m1 = m;
}

// The same with the second moment t = sum exp(2 (x - shift(m))) of the
// weights, for diagnostics: it rescales by the square of s's factor.
template <typename V>
IWAE_HD V absorb_max2(V& m, V& s, V& t, V block_max) {
  V m_new = LaneOps<V>::max(m, block_max);
  const V r = rescale(m, m_new);
  s = s * r;
  t = t * (r * r);
  m = m_new;
  return LaneOps<V>::shift(m_new);
}

template <typename V>
IWAE_HD void merge2(V& m1, V& s1, V& t1, V m2, V s2, V t2) {
  V m = LaneOps<V>::max(m1, m2);
  const V r1 = rescale(m1, m), r2 = rescale(m2, m);
  s1 = s1 * r1 + s2 * r2;
  t1 = t1 * (r1 * r1) + t2 * (r2 * r2);
  m1 = m;
}

// Effective sample size (sum w)^2 / sum w^2 = s^2 / t, and the largest
// normalised weight exp(m - shift(m)) / s (the max sample's term is
// exp(0) = 1 when the max is finite), from one final state. An all -inf
// slice has no weight to spread: ESS 0, largest weight 0. NaN propagates;
// a +inf sample gives NaN.
template <typename T>
IWAE_HD void diagnostics(T m, T s, T t, T& ess, T& max_w) {
  if (s == T(0)) {
    ess = T(0);
    max_w = T(0);
    return;
  }
  ess = s * s / t;
  max_w = LaneOps<T>::exp(m - LaneOps<T>::shift(m)) / s;
}

// log(sum_k exp(x_k)) from the state. Kernels that keep the result for a
// backward store its two terms apart, shift(m) and log_norm(s) (the "stats").
template <typename V>
IWAE_HD V finalize(V m, V s) {
  return LaneOps<V>::shift(m) + LaneOps<V>::log(s);
}

} // namespace IWAE_ISA
} // namespace iwae_fused
