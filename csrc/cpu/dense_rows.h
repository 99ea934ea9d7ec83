// The weights pass over dense rows: output o's K samples at P + o * K, every
// operand and gradient laid out alike, the incoming gradient contiguous or a
// broadcast scalar. The [B, K] over the last dim of a training step, in
// either call form. Included by kernels_impl.h after Kernels<scalar_t>.
//
// Two loops, both one pass in memory order, with every per-row value in
// registers and nothing recomputed per element (NOTES.md CPU 16):
//  * K >= L: one row at a time, its shift, log_norm and g broadcast, its
//    samples in full vectors and one masked tail;
//  * K < L (and K >= L not a multiple of L where the stores stream,
//    stream_stores.h): vectors of L consecutive elements hold the samples
//    of up to two rows (K >= L) or up to L rows (K < L). A block of L rows
//    is K such vectors; its rows' values are one load per block and one
//    lane permutation per vector, from a table of K vectors of lane
//    indices built once per call.
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
    bool stream; // non-temporal gradient stores (stream_stores.h)
    V beta;
    explicit Run(const WeightsArgs& a) {
      const typename Base::WeightsPtrs ptr(a);
      P = ptr.p, Q = ptr.q, G = ptr.g, OP = ptr.op, OQ = ptr.oq;
      stream = ptr.stream;
      shift = ptr.shift, log_norm = ptr.log_norm;
      K = a.K, rows = a.outer, g_so = a.g_so, mode = a.mode;
      beta = V(static_cast<opmath_t>(a.beta));
    }

    // c elements at offset j (c == L: full vectors, the count checks fold).
    template <bool HAS_Q>
    C10_ALWAYS_INLINE void step(
        int64_t j, int64_t c, const V& sh, const V& ln, const V& g, bool has_g) const {
      if constexpr (!HAS_Q) IO::prefetch_ahead(P + j); // CPU 35: w form only
      V x = c == L ? IO::load(P + j) : IO::load(P + j, c);
      if constexpr (HAS_Q) x = x - (c == L ? IO::load(Q + j) : IO::load(Q + j, c));
      const V wn = Lane::weight(x * beta - sh, ln);
      const V w = has_g ? wn * g : wn;
      if (OP) IO::store_out(OP + j, w, c, stream);
      if (OQ) IO::store_out(OQ + j, Base::q_grad(mode, w, wn), c, stream);
    }
  };

  template <bool HAS_Q>
  static void long_rows(const WeightsArgs& a) {
    Run run(a);
    const int64_t K = run.K, full = K / L * L;
    // Streams only where every row starts aligned (K a multiple of L;
    // block_rows takes the other lengths when streaming): an aligned
    // grid per row, a masked head whose line is shared with the previous
    // row, measured no faster than ordinary stores (NOTES.md CPU 36).
    run.stream = run.stream && K % L == 0;
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
      fence_streams(r.stream);
    });
  }

  // The rows of whole blocks of L rows; returns how many rows that was.
  // Rows of K < L, and rows of K >= L not a multiple of L when the stores
  // stream (stream_stores.h; weights() says when): a block is K vectors on
  // the aligned grid of the element stream, each over up to L rows (K < L)
  // or at most two (K >= L) of the block's L, whose stats and g are one
  // load per block; lane l of vector v takes row (v L + l) / K of them,
  // one permute. Per vector that is the three permutes of a period of K /
  // gcd(K, L) vectors, without the period's three unaligned loads per
  // vector and its loop around one vector where K divides L: the training
  // steps of K = 2, 4, 8 took 0.77-0.93x the time in the w form. A table
  // of one period, each period adding its first row, was 1.1-1.3x slower
  // than this table of K vectors, which at K = 1000 (64 KB, read once per
  // block beside as many bytes of P) was as fast (NOTES.md CPU 52).
  template <bool HAS_Q>
  static int64_t block_rows(const WeightsArgs& a) {
    const Run run(a);
    const int64_t K = run.K;
    const int64_t blocks = run.rows / L;
    if (blocks == 0) return 0;
    std::vector<idx_t> lane_row(K * L); // vector v's lanes at v * L
    for (int64_t j = 0; j < K * L; ++j) lane_row[j] = static_cast<idx_t>(j / K);
    const int64_t grain = std::max<int64_t>(1, kParallelElems / (K * L));
    parallel_for(0, blocks, grain, [&](int64_t b, int64_t e) {
      const Run r = run;
      const idx_t* lanes = lane_row.data();
      const bool has_g = r.G != nullptr, g_rows = has_g && r.g_so != 0;
      const V g0(has_g && !g_rows ? static_cast<opmath_t>(r.G[0]) : opmath_t(1));
      for (int64_t bb = b; bb < e; ++bb) {
        const int64_t r0 = bb * L, j0 = r0 * K;
        const V shift = V::loadu(r.shift + r0), log_norm = V::loadu(r.log_norm + r0);
        const V g_block = g_rows ? IO::load(r.G + r0) : g0;
        for (int64_t v = 0; v < K; ++v) {
          const VI perm = VI::loadu(lanes + v * L);
          const V g = g_rows ? Shuffles::permute(g_block, perm) : g0;
          r.template step<HAS_Q>(
              j0 + v * L, L, Shuffles::permute(shift, perm),
              Shuffles::permute(log_norm, perm), g, has_g);
        }
      }
      fence_streams(r.stream);
    });
    return blocks * L;
  }

  // Rows whose stats the weights pass recomputes, given none: K of 2, 4 or
  // 8 (dividing L), where L rows are K whole vectors that split_samples
  // turns into one vector per sample in a few permutes (AVX-512, float
  // lanes). normalized_weights then takes one pass instead of two
  // (1.6-2.6x faster, NOTES.md CPU 23).
  static bool recomputes(const WeightsArgs& a) {
    const int64_t K = a.K;
    return Shuffles::kFastTranspose && applies(a) && K > 1 && K < L && L % K == 0 &&
        a.mode == kNegWeight;
  }

  // The weights of L rows from row r0 (n <= L of them real) with their max
  // and sum taken here: after the split, x[k] lane l is sample k of row
  // r0 + l. The rules are those of Lane::weight with the saved stats: an
  // all -inf row (sum 0) gets weight 0, a NaN makes its row NaN, a +inf
  // gives NaN there and 0 at the row's other samples. K is a
  // template argument so that every array stays in registers.
  template <bool HAS_Q, int K>
  C10_ALWAYS_INLINE static void recomputed_tile(
      const Run& r, int64_t r0, int64_t n, const V& g0, bool has_g, bool g_scalar) {
    const int64_t j0 = r0 * K, c = n * K; // c elements, row after row
    V x[K];
    if (c == K * L) {
      for (int k = 0; k < K; ++k) {
        if constexpr (!HAS_Q) IO::prefetch_ahead(r.P + j0 + k * L); // CPU 35
        x[k] = IO::load(r.P + j0 + k * L);
        if constexpr (HAS_Q) x[k] = x[k] - IO::load(r.Q + j0 + k * L);
      }
    } else { // the last tile; lanes of rows past n are never stored
      for (int k = 0; k < K; ++k) {
        const int64_t m = std::max<int64_t>(0, std::min<int64_t>(L, c - k * L));
        x[k] = IO::load(r.P + j0 + k * L, m);
        if constexpr (HAS_Q) x[k] = x[k] - IO::load(r.Q + j0 + k * L, m);
      }
    }
    for (int k = 0; k < K; ++k) x[k] = x[k] * r.beta;
    Shuffles::template split_samples<K>(x);
    V mx(-INFINITY);
    for (int k = 0; k < K; ++k) mx = Lane::max(x[k], mx);
    const V sh = Lane::shift(mx);
    // A row holding +inf has shift 0, and its finite samples could overflow:
    // they take exp(-inf) = 0, so that the +inf one gets inf / inf = NaN and
    // the others 0, as exp(x - log_norm = +inf) gives.
    const V inf_row = mx == V(INFINITY);
    V e[K], sum(0);
    for (int k = 0; k < K; ++k) {
      e[k] = Lane::exp(V::blendv(x[k] - sh, V(-INFINITY), inf_row & (x[k] < V(INFINITY))));
      sum = sum + e[k];
    }
    V inv = V::blendv(V(1) / sum, V(0), sum == V(0));
    V g = g0;
    if (has_g && !g_scalar) g = n == L ? IO::load(r.G + r0) : IO::load(r.G + r0, n);
    if (has_g) inv = inv * g;
    V w[K];
    for (int k = 0; k < K; ++k) w[k] = e[k] * inv; // g w~ (inf * 0 = NaN at +inf)
    if (r.OQ) { // -g w~ (kNegWeight: recomputes() takes no other mode)
      V wq[K];
      for (int k = 0; k < K; ++k) wq[k] = V(0) - w[k];
      Shuffles::template merge_samples<K>(wq);
      store_tile<K>(r.OQ + j0, wq, c, r.stream);
    }
    if (r.OP) {
      Shuffles::template merge_samples<K>(w);
      store_tile<K>(r.OP + j0, w, c, r.stream);
    }
  }

  template <int K>
  C10_ALWAYS_INLINE static void store_tile(
      scalar_t* out, const V (&v)[K], int64_t c, bool stream) {
    if (c == K * L) {
      for (int k = 0; k < K; ++k) IO::store_out(out + k * L, v[k], L, stream);
      return;
    }
    for (int k = 0; k < K && k * L < c; ++k) {
      IO::store(out + k * L, v[k], std::min<int64_t>(L, c - k * L));
    }
  }

  template <bool HAS_Q, int K>
  static void recomputed_rows_k(const WeightsArgs& a) {
    const Run run(a);
    const int64_t tiles = ceil_div(run.rows, L);
    const int64_t grain = std::max<int64_t>(1, kParallelElems / (L * K));
    parallel_for(0, tiles, grain, [&](int64_t b, int64_t e) {
      const Run r = run;
      const bool has_g = r.G != nullptr, g_scalar = has_g && r.g_so == 0;
      const V g0(g_scalar ? static_cast<opmath_t>(r.G[0]) : opmath_t(1));
      for (int64_t t = b; t < e; ++t) {
        const int64_t r0 = t * L;
        recomputed_tile<HAS_Q, K>(r, r0, std::min(L, r.rows - r0), g0, has_g, g_scalar);
      }
      fence_streams(r.stream);
    });
  }

  template <bool HAS_Q>
  static void recomputed_rows(const WeightsArgs& a) {
    if (a.K == 2) {
      recomputed_rows_k<HAS_Q, 2>(a);
    } else if (a.K == 4) {
      recomputed_rows_k<HAS_Q, 4>(a);
    } else if constexpr (L > 8) {
      recomputed_rows_k<HAS_Q, 8>(a);
    }
  }

  // Runs the weights pass if the layout is dense rows: the first row the
  // caller must still do (a.outer: none), or -1 where it does not apply.
  // Without stats (recomputes() held) it does every row.
  static int64_t weights(const WeightsArgs& a) {
    if (!applies(a)) return -1;
    const bool q = a.q.data != nullptr;
    if (!a.stats) {
      q ? recomputed_rows<true>(a) : recomputed_rows<false>(a);
      return a.outer;
    }
    // Rows of K >= L stream through block_rows while a permute is one
    // instruction and the rows' pattern repeats within kShortK vectors (its
    // lane table is then K <= 1,016 vectors for float lanes, 508 for double).
    const bool blocked = a.K < L ||
        (a.K % L != 0 && Shuffles::kFastPermute && a.K / lane_gcd(a.K, L) <= kShortK &&
         typename Base::WeightsPtrs(a).stream);
    if (!blocked) {
      q ? long_rows<true>(a) : long_rows<false>(a);
      return a.outer;
    }
    return q ? block_rows<true>(a) : block_rows<false>(a);
  }
};

} // namespace CPU_CAPABILITY
} // namespace iwae_fused::cpu
