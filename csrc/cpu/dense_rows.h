// The weights pass over dense rows: output o's K samples at P + o * K, every
// operand and gradient laid out alike, the incoming gradient contiguous or a
// broadcast scalar. The [B, K] over the last dim of a training step, in
// either call form. Included by kernels_impl.h after Kernels<scalar_t>.
//
// Two loops, both one pass in memory order, with every per-row value in
// registers and nothing recomputed per element (NOTES.md CPU 16):
//  * K >= L: one row at a time, its shift, log_norm and g broadcast, its
//    samples in full vectors and one masked tail;
//  * K < L: vectors of L consecutive elements hold the samples of up to L
//    rows. Their rows' values are one contiguous load from the first row a
//    vector touches and one lane permutation; the pattern repeats every
//    lcm(K, L) elements, so its L-lane indices are a table of K / gcd(K, L)
//    vectors built once per call.
// The general weights pass (kernels_impl.h) recomputed a row's position with
// two divisions and reloaded the arguments per row; lane tiles gathered
// every lane's values (short_rows.h): both ran at 2-4x this loop's time.
#pragma once

namespace iwae_fused::cpu {
inline namespace CPU_CAPABILITY {

template <typename scalar_t>
struct DenseRows {
  using Base = Kernels<scalar_t>;
  using IO = VecIO<scalar_t>;
  using opmath_t = typename IO::opmath_t;
  using V = typename IO::V;
  using Lane = LaneOps<V>;
  using Shuffles = LaneShuffles<V>;
  using idx_t = typename Shuffles::idx_t;
  using VI = typename Shuffles::VI;
  static constexpr int64_t L = IO::L;

  static bool applies(const WeightsArgs& a) {
    const int64_t K = a.K;
    auto rows = [&](const Strided& s) { return (K == 1 || s.sk == 1) && (a.outer == 1 || s.so == K); };
    return a.inner == 1 && rows(a.p) && (!a.q.data || rows(a.q)) &&
        (K == 1 || a.out_sk == 1) && (a.outer == 1 || a.out_so == K) &&
        (!a.g || a.g_so == 0 || a.g_so == 1);
  }

  // The pointers and per-call constants of both loops, as locals.
  struct Run {
    const scalar_t *P, *Q, *G;
    scalar_t *OP, *OQ;
    const opmath_t *shift, *log_norm;
    int64_t K, rows, g_so;
    int mode;
    V beta;
    explicit Run(const WeightsArgs& a) {
      const typename Base::WeightsPtrs ptr(a);
      P = ptr.p, Q = ptr.q, G = ptr.g, OP = ptr.op, OQ = ptr.oq;
      shift = ptr.shift, log_norm = ptr.log_norm;
      K = a.K, rows = a.outer, g_so = a.g_so, mode = a.mode;
      beta = V(static_cast<opmath_t>(a.beta));
    }

    // c elements at offset j (c == L: full vectors, the count checks fold).
    template <bool HAS_Q>
    C10_ALWAYS_INLINE void step(
        int64_t j, int64_t c, const V& sh, const V& ln, const V& g, bool has_g) const {
      V x = c == L ? IO::load(P + j) : IO::load(P + j, c);
      if constexpr (HAS_Q) x = x - (c == L ? IO::load(Q + j) : IO::load(Q + j, c));
      const V wn = Lane::weight(x * beta - sh, ln);
      const V w = has_g ? wn * g : wn;
      if (OP) IO::store(OP + j, w, c);
      if (OQ) IO::store(OQ + j, Base::q_grad(mode, w, wn), c);
    }
  };

  template <bool HAS_Q>
  static void long_rows(const WeightsArgs& a) {
    const Run run(a);
    const int64_t K = run.K, full = K / L * L;
    const int64_t grain = std::max<int64_t>(1, kParallelElems / K);
    parallel_for(0, run.rows, grain, [&](int64_t b, int64_t e) {
      const Run r = run;
      const bool has_g = r.G != nullptr;
      for (int64_t o = b; o < e; ++o) {
        const V sh(r.shift[o]), ln(r.log_norm[o]);
        const V g(has_g ? static_cast<opmath_t>(r.G[o * r.g_so]) : opmath_t(1));
        const int64_t j0 = o * K;
        int64_t j = 0;
        for (; j < full; j += L) r.template step<HAS_Q>(j0 + j, L, sh, ln, g, has_g);
        if (j < K) r.template step<HAS_Q>(j0 + j, K - j, sh, ln, g, has_g);
      }
    });
  }

  // The rows of whole periods; returns how many rows that was.
  template <bool HAS_Q>
  static int64_t short_rows(const WeightsArgs& a) {
    const Run run(a);
    const int64_t K = run.K;
    const int64_t PV = K / lane_gcd(K, L); // vectors per period (< L)
    const int64_t R = PV * L / K; // rows per period
    const int64_t periods = run.rows / R;
    if (periods == 0) return 0;
    int64_t first[L]; // the first row vector v of a period touches
    idx_t lane_row[L * L]; // and each lane's row, relative to it
    for (int64_t v = 0; v < PV; ++v) {
      first[v] = v * L / K;
      for (int64_t l = 0; l < L; ++l) {
        lane_row[v * L + l] = static_cast<idx_t>((v * L + l) / K - first[v]);
      }
    }
    const int64_t grain = std::max<int64_t>(1, kParallelElems / (PV * L));
    parallel_for(0, periods, grain, [&](int64_t b, int64_t e) {
      const Run r = run;
      UninitVecs<VI, L> perm;
      for (int64_t v = 0; v < PV; ++v) perm[v] = VI::loadu(lane_row + v * L);
      const bool has_g = r.G != nullptr, g_scalar = has_g && r.g_so == 0;
      const V g0(g_scalar ? static_cast<opmath_t>(r.G[0]) : opmath_t(1));
      for (int64_t pp = b; pp < e; ++pp) {
        const int64_t r0 = pp * R, j0 = r0 * K;
        for (int64_t v = 0; v < PV; ++v) {
          const int64_t o = r0 + first[v];
          // Up to L rows from o; fewer where the rows end (masked loads).
          const int64_t n = std::min<int64_t>(L, r.rows - o);
          V sh, ln, g = g0;
          if (n == L) {
            sh = Shuffles::permute(V::loadu(r.shift + o), perm[v]);
            ln = Shuffles::permute(V::loadu(r.log_norm + o), perm[v]);
            if (has_g && !g_scalar) g = Shuffles::permute(IO::load(r.G + o), perm[v]);
          } else {
            sh = Shuffles::permute(V::loadu(r.shift + o, n), perm[v]);
            ln = Shuffles::permute(V::loadu(r.log_norm + o, n), perm[v]);
            if (has_g && !g_scalar) g = Shuffles::permute(IO::load(r.G + o, n), perm[v]);
          }
          r.template step<HAS_Q>(j0 + v * L, L, sh, ln, g, has_g);
        }
      }
    });
    return periods * R;
  }

  // Runs the weights pass if the layout is dense rows: the first row the
  // caller must still do (a.outer: none), or -1 where it does not apply.
  static int64_t weights(const WeightsArgs& a) {
    if (!applies(a)) return -1;
    const bool q = a.q.data != nullptr;
    if (a.K >= L) {
      q ? long_rows<true>(a) : long_rows<false>(a);
      return a.outer;
    }
    return q ? short_rows<true>(a) : short_rows<false>(a);
  }
};

} // namespace CPU_CAPABILITY
} // namespace iwae_fused::cpu
