// Lane tiles: the CPU kernels for slices too short to fill a vector (issue 13).
// Included by kernels_impl.h after Kernels<scalar_t>, in the same namespace.
//
// The rows kernel gives the L lanes of a vector L samples of one output and
// merges the lanes at the end of every row; the columns kernel gives them L
// outputs side by side. Both waste lanes when the vectorised axis is short:
// [B, K] over the last dim with K < L leaves most lanes as padding and pays
// a lane merge per row, and columns with inner < L fill only inner lanes.
//
// One design covers all the short cases: every lane is given one (output,
// sample phase) pair and walks that output's samples with the column
// kernel's blocked online update (a block's max into an L1 buffer, then its
// exps against the updated max, online_lse.h's absorb_max); lanes that share
// an output are merged once at the very end. Two lane maps:
//  * across outputs (many short slices: rows with K < kShortK, columns with
//    inner <= L/2 and short slabs): the L lanes hold L consecutive outputs,
//    loaded with one gather per sample (lane offsets o * so + i * si, fixed
//    for a tile; sample stride sk), so no lane is padding and no row pays a
//    merge. A tile is kTileVecs vectors of outputs, for independent chains.
//  * across samples (columns with inner <= L/2 and long slabs, each slab
//    [K, inner] contiguous): a plain load of L consecutive elements holds
//    L / inner samples of each output; lane l of vector v of a period of PV =
//    inner / gcd(inner, L) vectors always belongs to output (v L + l) % inner,
//    so the state is PV vectors, folded into inner outputs once per piece of
//    K (K is split across threads as for columns).
// The backward's weights pass is element-wise: over the contiguous element
// stream, each element's (shift, log_norm) and incoming gradient are
// gathered from the per-output arrays with an index pattern that repeats
// every `period` vectors (the same two lane maps: a tile of L short slabs of
// K * inner elements, or one long slab's inner outputs), instead of one run
// of K (rows) or inner (columns) elements per output and sample.
// The plan's geometry is unchanged; which kernel runs is decided here from
// K, inner and the strides, and everything else (the stats, DIAG, Renyi's
// beta, the finish) is the existing kernels' code.
#pragma once

namespace iwae_fused::cpu {
inline namespace CPU_CAPABILITY {

// Rows shorter than this run on lanes across outputs; from it on the rows
// kernel is as fast (measured, benchmarks/NOTES.md CPU 10).
constexpr int64_t kShortK = 128;
// Columns with inner <= L / 2 run on lanes across outputs while a slab of
// K * inner elements is shorter than this many vectors, and on lanes across
// samples from there on, where the per-slab lane fold (L scalar merges) has
// become cheap next to the slab (measured, NOTES.md CPU 10).
constexpr int64_t kShortSlabVecs = 48;
constexpr int64_t kLaneTileVecs = 4; // vectors of outputs per tile
constexpr int64_t kMaxPhases = 16; // tile offsets cached up to this inner size
// The weights pass streams each slab on its own from this many vectors of
// K * inner elements on, and tiles of L slabs below.
constexpr int64_t kStreamMinVecs = 4;

// gcd here rather than std::gcd: a std:: template instantiated under this
// file's target could be the copy the linker keeps for another instruction
// set (kernels_prelude.h).
constexpr int64_t lane_gcd(int64_t a, int64_t b) {
  return b == 0 ? a : lane_gcd(b, a % b);
}

template <typename scalar_t>
struct LaneTiles {
  using Base = Kernels<scalar_t>;
  using IO = VecIO<scalar_t>;
  using opmath_t = typename IO::opmath_t;
  using V = typename IO::V;
  using Lane = LaneOps<V>;
  using idx_t = at::vec::int_same_size_t<opmath_t>;
  using VI = at::vec::Vectorized<idx_t>;
  static constexpr int64_t L = IO::L;
  static constexpr int64_t T = kLaneTileVecs * L; // outputs per tile

  // L elements base[idx[l]], widened to opmath. Hardware gathers for
  // float/double; half types go through a scalar buffer (no 16-bit gather).
  static V gather(const scalar_t* base, const VI& vidx, const idx_t* idx) {
    if constexpr (IO::kWiden) {
      scalar_t tmp[L];
      for (int64_t l = 0; l < L; ++l) tmp[l] = base[idx[l]];
      return IO::load(tmp);
    } else {
      return at::vec::gather<sizeof(scalar_t)>(base, vidx);
    }
  }

  // Whether every element offset of the operands fits the gather index type.
  template <typename Args>
  static bool offsets_fit(const Args& a) {
    auto span = [&](const Strided& s) {
      return (a.outer - 1) * s.so + (a.K - 1) * s.sk + (a.inner - 1) * s.si;
    };
    const int64_t lim = int64_t(1) << (8 * sizeof(idx_t) - 2);
    return span(a.p) < lim && (!a.q.data || span(a.q) < lim);
  }

  // Whether one slab [K, inner] of s is contiguous (K == 1: any sk).
  static bool slab_dense(const Strided& s, int64_t K, int64_t inner) {
    return (K == 1 || s.sk == inner) && (inner == 1 || s.si == 1);
  }

  // Asks for the lines of the n elements at p (and q) into L2, spread over
  // `steps` calls of step(): a tile's prefetch of the next one, issued a few
  // lines at a time between its arithmetic (NOTES.md CPU 46). Past the last
  // tile the addresses lie past the operand (VecIO::prefetch_line).
  template <bool HAS_Q>
  struct NextTile {
    static constexpr uintptr_t kLine = 64;
    uintptr_t p, q, end;
    int64_t per; // lines per step
    NextTile(const scalar_t* p_, const scalar_t* q_, int64_t n, int64_t steps)
        : p(reinterpret_cast<uintptr_t>(p_)),
          q(reinterpret_cast<uintptr_t>(q_)),
          end(p + uintptr_t(n) * sizeof(scalar_t)),
          per(ceil_div(ceil_div(n * int64_t(sizeof(scalar_t)), kLine), steps)) {}
    C10_ALWAYS_INLINE void step() {
      for (int64_t i = 0; i < per && p < end; ++i, p += kLine) {
        IO::prefetch_line(p);
        if constexpr (HAS_Q) {
          IO::prefetch_line(q);
          q += kLine;
        }
      }
    }
  };

  // ---- reduction across outputs ---------------------------------------------

  // Whether the slabs of s follow each other densely (rows: K contiguous
  // samples each; columns: [K, inner] contiguous each).
  static bool slabs_dense(const Strided& s, const ReduceArgs& a) {
    return slab_dense(s, a.K, a.inner) &&
        (a.outer == 1 || s.so == a.K * a.inner);
  }

  // Offsets of the `lanes` lanes of a tile of n outputs whose first output
  // is at inner index i0, relative to that output (DENSE: in the buffer of
  // whole slabs, from the first slab's start). Lanes past the last output
  // repeat it: valid reads, never stored.
  template <bool HAS_Q, bool DENSE>
  static void lane_offsets(
      const ReduceArgs& a, int64_t i0, int64_t n, int64_t lanes, idx_t* ip,
      idx_t* iq) {
    int64_t o = 0, i = i0;
    for (int64_t j = 0; j < lanes; ++j) {
      if constexpr (DENSE) {
        ip[j] = o * a.K * a.inner + i;
      } else {
        ip[j] = o * a.p.so + (i - i0) * a.p.si;
        if constexpr (HAS_Q) iq[j] = o * a.q.so + (i - i0) * a.q.si;
      }
      if (j + 1 < n && ++i == a.inner) i = 0, ++o;
    }
  }

  // DENSE: the slabs a tile touches are one contiguous run; its log-weights
  // are computed once with contiguous loads into an L1 buffer (widened and
  // scaled) and gathered from there: one gather per sample from L1 instead
  // of one per operand from memory, and half types widened with vector
  // loads instead of scalar ones (NOTES.md CPU 10).
  template <bool HAS_Q, bool DIAG, bool DENSE>
  static void reduce_across_outputs(const ReduceArgs& a) {
    const int64_t n_out = a.outer * a.inner;
    const int64_t tiles = ceil_div(n_out, T);
    const int64_t grain = std::max<int64_t>(1, kParallelElems / (a.K * T));
    const int64_t slab = a.K * a.inner;
    const auto* P = static_cast<const scalar_t*>(a.p.data);
    const auto* Q = static_cast<const scalar_t*>(a.q.data);
    const V beta(static_cast<opmath_t>(a.beta));
    // The offsets of a full tile depend only on the phase r0 % inner of its
    // first output: computed once per phase where there are few.
    const int64_t phases = a.inner <= kMaxPhases ? a.inner : 0;
    std::vector<idx_t> phase_p(phases * T), phase_q(HAS_Q ? phases * T : 0);
    for (int64_t ph = 0; ph < phases; ++ph) {
      lane_offsets<HAS_Q, DENSE>(
          a, ph, T, T, phase_p.data() + ph * T,
          HAS_Q ? phase_q.data() + ph * T : nullptr);
    }
    parallel_for(0, tiles, grain, [&](int64_t b, int64_t e) {
      opmath_t mo[T], so[T], to[DIAG ? T : 1];
      idx_t ip[T], iq[T];
      UninitVecs<V, kLaneTileVecs> m, s, t, bmax;
      UninitTile<V, kBlock, kLaneTileVecs> buf;
      UninitVecs<VI, kLaneTileVecs> vp, vq;
      // A tile spans at most T / inner + 2 slabs.
      std::vector<opmath_t> xbuf(DENSE ? (T / a.inner + 2) * slab : 0);
      for (int64_t tile = b; tile < e; ++tile) {
        const int64_t r0 = tile * T, n = std::min(T, n_out - r0);
        const int64_t nv = ceil_div(n, L);
        const int64_t o0 = r0 / a.inner, i0 = r0 % a.inner;
        const scalar_t* p0 = P + o0 * a.p.so + i0 * a.p.si;
        const scalar_t* q0 = HAS_Q ? Q + o0 * a.q.so + i0 * a.q.si : nullptr;
        if constexpr (DENSE) {
          const int64_t c = ((r0 + n - 1) / a.inner - o0 + 1) * slab;
          const scalar_t* ps = P + o0 * slab;
          const scalar_t* qs = HAS_Q ? Q + o0 * slab : nullptr;
          int64_t j = 0;
          for (; j + L <= c; j += L) {
            V x = IO::load(ps + j);
            if constexpr (HAS_Q) x = x - IO::load(qs + j);
            (x * beta).store(xbuf.data() + j);
          }
          if (j < c) {
            V x = IO::load(ps + j, c - j);
            if constexpr (HAS_Q) x = x - IO::load(qs + j, c - j);
            (x * beta).store(xbuf.data() + j, c - j);
          }
        }
        // DENSE: the next tile's slabs (counted as the copy above counts
        // this tile's) arrive while this one's arithmetic runs, as in
        // reduce_rows_transposed (NOTES.md CPU 46).
        const int64_t o_next = (r0 + n) / a.inner;
        const int64_t n_next = std::min(T, n_out - r0 - n);
        NextTile<HAS_Q && DENSE> next(
            DENSE ? P + o_next * slab : nullptr,
            DENSE && HAS_Q ? Q + o_next * slab : nullptr,
            DENSE && n_next > 0 ? ((r0 + n + n_next - 1) / a.inner - o_next + 1) * slab : 0,
            a.K);
        const idx_t* ipt = ip;
        const idx_t* iqt = iq;
        if (n == T && i0 < phases) {
          ipt = phase_p.data() + i0 * T;
          iqt = phase_q.data() + i0 * T;
        } else {
          lane_offsets<HAS_Q, DENSE>(a, i0, n, nv * L, ip, iq);
        }
        for (int64_t v = 0; v < nv; ++v) {
          vp[v] = VI::loadu(ipt + v * L);
          if constexpr (HAS_Q && !DENSE) vq[v] = VI::loadu(iqt + v * L);
          m[v] = V(-INFINITY), s[v] = V(0);
          if constexpr (DIAG) t[v] = V(0);
        }
        for (int64_t kb = 0; kb < a.K; kb += kBlock) {
          const int64_t r = std::min(kBlock, a.K - kb);
          for (int64_t v = 0; v < nv; ++v) bmax[v] = V(-INFINITY);
          for (int64_t j = 0; j < r; ++j) {
            next.step();
            const scalar_t* pk = p0 + (kb + j) * a.p.sk;
            const scalar_t* qk = HAS_Q ? q0 + (kb + j) * a.q.sk : nullptr;
            for (int64_t v = 0; v < nv; ++v) {
              V x;
              if constexpr (DENSE) {
                x = at::vec::gather<sizeof(opmath_t)>(
                    xbuf.data() + (kb + j) * a.inner, vp[v]);
              } else {
                x = gather(pk, vp[v], ipt + v * L);
                if constexpr (HAS_Q) x = x - gather(qk, vq[v], iqt + v * L);
                x = x * beta;
              }
              buf[j][v] = x;
              bmax[v] = Lane::max(x, bmax[v]);
            }
          }
          Base::template absorb_block<DIAG>(
              m.data(), s.data(), t.data(), bmax.data(), buf, r, nv, kb == 0);
        }
        for (int64_t v = 0; v < nv; ++v) {
          m[v].store(mo + v * L);
          s[v].store(so + v * L);
          if constexpr (DIAG) t[v].store(to + v * L);
        }
        Base::finish(a, r0, mo, so, to, n);
      }
    });
  }

  // Dense slabs [K, inner] of K = 2 to 8 samples, inner dividing L (rows:
  // inner = 1), K a template argument: L consecutive outputs are L / inner
  // whole slabs, K whole vectors, loaded straight from the operands and
  // split into one vector per sample in registers (rows: LaneShuffles::
  // split; slabs: split_by with a map made once per call), so that lane l
  // holds output l; the max, the exponentials and the sum stay in
  // registers, the same arithmetic in the same order as absorb_block's
  // first block. Where reduce_rows_transposed passed every value through
  // its tile buffer, block array and block buffer, and
  // reduce_across_outputs gathered every lane (NOTES.md CPU 30, 33).
  template <bool HAS_Q, int K>
  static void reduce_split(const ReduceArgs& a) {
    static_assert(K > 1 && K < L, "reduce_split: K below L");
    const int64_t rows = a.outer * a.inner; // outputs
    const bool slabs = a.inner > 1;
    // Built only for slabs: 16 K divisions, a cost on small calls.
    typename LaneShuffles<V>::template SampleSplit<K> map;
    if (slabs) map = typename LaneShuffles<V>::template SampleSplit<K>(a.inner);
    const int64_t tiles = ceil_div(rows, T);
    const int64_t grain = std::max<int64_t>(1, kParallelElems / (K * T));
    const auto* P = static_cast<const scalar_t*>(a.p.data);
    const auto* Q = static_cast<const scalar_t*>(a.q.data);
    const V beta(static_cast<opmath_t>(a.beta));
    const bool scaled = a.beta != 1.0;
    parallel_for(0, tiles, grain, [&](int64_t b, int64_t e) {
      opmath_t mo[T], so[T], to[1];
      for (int64_t tile = b; tile < e; ++tile) {
        const int64_t r0 = tile * T, n = std::min(T, rows - r0);
        for (int64_t v = 0; v * L < n; ++v) {
          const int64_t j0 = (r0 + v * L) * K;
          const int64_t c = std::min(L, n - v * L) * K; // elements
          V x[K];
          if (c == K * L) {
            for (int k = 0; k < K; ++k) {
              IO::prefetch_ahead(P + j0 + k * L);
              x[k] = IO::load(P + j0 + k * L);
              if constexpr (HAS_Q) {
                IO::prefetch_ahead(Q + j0 + k * L);
                x[k] = x[k] - IO::load(Q + j0 + k * L);
              }
            }
          } else { // past the last output: lanes never stored
            for (int k = 0; k < K; ++k) {
              const int64_t m = std::max<int64_t>(0, std::min<int64_t>(L, c - k * L));
              x[k] = IO::load(P + j0 + k * L, m);
              if constexpr (HAS_Q) x[k] = x[k] - IO::load(Q + j0 + k * L, m);
            }
          }
          if (scaled) {
            for (int k = 0; k < K; ++k) x[k] = x[k] * beta;
          }
          if (slabs) {
            LaneShuffles<V>::template split_by<K>(x, map);
          } else {
            LaneShuffles<V>::template split<K>(x);
          }
          V mx(-INFINITY);
          for (int k = 0; k < K; ++k) mx = Lane::max(x[k], mx);
          const V sh = Lane::shift(mx);
          V acc(0);
          for (int k = 0; k < K; ++k) acc = acc + Lane::exp(x[k] - sh);
          mx.store(mo + v * L);
          acc.store(so + v * L);
        }
        Base::finish(a, r0, mo, so, to, n);
      }
    });
  }

  // reduce_split for the run-time K; false where K is not 2 to 8 or the
  // split is not a register network here.
  template <bool HAS_Q>
  static bool split_reduce(const ReduceArgs& a) {
    if constexpr (LaneShuffles<V>::kFastSplitRows && L == 16) {
      switch (a.K) {
        case 2: reduce_split<HAS_Q, 2>(a); return true;
        case 3: reduce_split<HAS_Q, 3>(a); return true;
        case 4: reduce_split<HAS_Q, 4>(a); return true;
        case 5: reduce_split<HAS_Q, 5>(a); return true;
        case 6: reduce_split<HAS_Q, 6>(a); return true;
        case 7: reduce_split<HAS_Q, 7>(a); return true;
        case 8: reduce_split<HAS_Q, 8>(a); return true;
        default: break;
      }
    }
    return false;
  }

  // Dense rows (inner == 1: outputs o at P + o * K, samples contiguous) where
  // transposing in registers is cheap (LaneShuffles::kFastTranspose), for
  // the K that reduce_split does not take (1, and 9 to 127). A
  // tile's rows are one contiguous run: its log-weights are computed with
  // contiguous loads into an L1 buffer (streaming reads, which the hardware
  // prefetches; rows read L samples at a time straight from memory were
  // stalls), then read back L rows by L samples at a time and transposed,
  // so that lane l of every vector holds one row, and the blocked online
  // update runs as in reduce_across_outputs, with no gathers (NOTES.md
  // CPU 16).
  template <bool HAS_Q>
  static void reduce_rows_transposed(const ReduceArgs& a) {
    static_assert(kBlock >= L, "a transposed block of L samples fits the buffer");
    const int64_t rows = a.outer, K = a.K;
    const int64_t tiles = ceil_div(rows, T);
    const int64_t grain = std::max<int64_t>(1, kParallelElems / (K * T));
    const auto* P = static_cast<const scalar_t*>(a.p.data);
    const auto* Q = static_cast<const scalar_t*>(a.q.data);
    const V beta(static_cast<opmath_t>(a.beta));
    parallel_for(0, tiles, grain, [&](int64_t b, int64_t e) {
      opmath_t mo[T], so[T], to[1];
      UninitVecs<V, kLaneTileVecs> m, s, t, bmax;
      UninitTile<V, kBlock, kLaneTileVecs> buf;
      UninitVecs<V, L> blk;
      std::vector<opmath_t> xbuf(T * K);
      for (int64_t tile = b; tile < e; ++tile) {
        const int64_t r0 = tile * T, n = std::min(T, rows - r0);
        const int64_t nv = ceil_div(n, L), c = n * K;
        const scalar_t* ps = P + r0 * K;
        const scalar_t* qs = HAS_Q ? Q + r0 * K : nullptr;
        // A chunk's first tile was not asked for by a previous one.
        const bool ahead = tile == b;
        int64_t j = 0;
        for (; j + L <= c; j += L) {
          if (ahead) IO::prefetch_ahead(ps + j);
          V x = IO::load(ps + j);
          if constexpr (HAS_Q) {
            if (ahead) IO::prefetch_ahead(qs + j);
            x = x - IO::load(qs + j);
          }
          (x * beta).store(xbuf.data() + j);
        }
        if (j < c) {
          V x = IO::load(ps + j, c - j);
          if constexpr (HAS_Q) x = x - IO::load(qs + j, c - j);
          (x * beta).store(xbuf.data() + j, c - j);
        }
        // The next tile's lines, a few per (block, vector) step below, so
        // that they arrive while this tile's arithmetic runs (NOTES.md CPU
        // 46). Past the last row they are prefetches of nothing: harmless.
        NextTile<HAS_Q> next(ps + c, qs ? qs + c : nullptr, c, ceil_div(K, L) * nv);
        for (int64_t kb = 0; kb < K; kb += L) {
          const int64_t w = std::min(L, K - kb);
          for (int64_t v = 0; v < nv; ++v) {
            next.step();
            const int64_t rv = std::min(L, n - v * L);
            const opmath_t* xr = xbuf.data() + v * L * K + kb;
            // Samples past w read as 0: columns that are never used.
            for (int64_t r = 0; r < rv; ++r) {
              blk[r] = w == L ? V::loadu(xr + r * K) : V::loadu(xr + r * K, w);
            }
            // Rows past the tile's last are lanes never stored.
            for (int64_t r = rv; r < L; ++r) blk[r] = V(0);
            LaneShuffles<V>::transpose(blk.data());
            V bm(-INFINITY);
            for (int64_t k = 0; k < w; ++k) {
              buf[k][v] = blk[k];
              bm = Lane::max(blk[k], bm);
            }
            bmax[v] = bm;
          }
          Base::template absorb_block<false>(
              m.data(), s.data(), t.data(), bmax.data(), buf, w, nv, kb == 0);
        }
        for (int64_t v = 0; v < nv; ++v) {
          m[v].store(mo + v * L);
          s[v].store(so + v * L);
        }
        Base::finish(a, r0, mo, so, to, n);
      }
    });
  }

  // ---- reduction across samples ---------------------------------------------

  // The inner outputs of slab o over samples [k0, k1) (slab contiguous).
  template <bool HAS_Q, bool DIAG>
  static void samples_state(
      const ReduceArgs& a, int64_t o, int64_t k0, int64_t k1, opmath_t* m_out,
      opmath_t* s_out, opmath_t* t_out) {
    constexpr int64_t kMaxPV = L / 2;
    const int64_t inner = a.inner;
    const int64_t PV = inner / lane_gcd(inner, L), G = PV * L;
    const int64_t n = (k1 - k0) * inner;
    const auto* P =
        static_cast<const scalar_t*>(a.p.data) + o * a.p.so + k0 * inner;
    const auto* Q = HAS_Q
        ? static_cast<const scalar_t*>(a.q.data) + o * a.q.so + k0 * inner
        : nullptr;
    const V beta(static_cast<opmath_t>(a.beta));
    UninitVecs<V, kMaxPV> m, s, t, bmax;
    UninitTile<V, kBlock, kMaxPV> buf;
    for (int64_t v = 0; v < PV; ++v) {
      m[v] = V(-INFINITY), s[v] = V(0);
      if constexpr (DIAG) t[v] = V(0);
    }
    for (int64_t e0 = 0; e0 < n; e0 += kBlock * G) {
      const int64_t r = std::min(kBlock, ceil_div(n - e0, G));
      for (int64_t v = 0; v < PV; ++v) bmax[v] = V(-INFINITY);
      for (int64_t j = 0; j < r; ++j) {
        for (int64_t v = 0; v < PV; ++v) {
          const int64_t at = e0 + j * G + v * L, c = n - at;
          V x;
          if (c >= L) {
            x = IO::load(P + at);
            if constexpr (HAS_Q) x = x - IO::load(Q + at);
            x = x * beta;
          } else if (c > 0) { // lanes past the slab hold -inf, the identity
            x = IO::load(P + at, c);
            if constexpr (HAS_Q) x = x - IO::load(Q + at, c);
            x = V::set(V(-INFINITY), x * beta, c);
          } else {
            x = V(-INFINITY);
          }
          buf[j][v] = x;
          bmax[v] = Lane::max(x, bmax[v]);
        }
      }
      Base::template absorb_block<DIAG>(
          m.data(), s.data(), t.data(), bmax.data(), buf, r, PV, e0 == 0);
    }
    // Fold the lanes into their outputs: lane l of vector v is output
    // (v L + l) % inner.
    opmath_t lm[kMaxPV * L], ls[kMaxPV * L], lt[kMaxPV * L];
    for (int64_t v = 0; v < PV; ++v) {
      m[v].store(lm + v * L);
      s[v].store(ls + v * L);
      if constexpr (DIAG) t[v].store(lt + v * L);
    }
    for (int64_t i = 0; i < inner; ++i) {
      opmath_t M = lm[i], S = ls[i], T2 = DIAG ? lt[i] : 0;
      for (int64_t j = i + inner; j < G; j += inner) {
        if constexpr (DIAG) {
          merge2(M, S, T2, lm[j], ls[j], lt[j]);
        } else {
          merge(M, S, lm[j], ls[j]);
        }
      }
      m_out[i] = M;
      s_out[i] = S;
      if constexpr (DIAG) t_out[i] = T2;
    }
  }

  template <bool HAS_Q, bool DIAG>
  static void reduce_across_samples(const ReduceArgs& a) {
    const int64_t n_out = a.outer * a.inner;
    const int64_t pieces = choose_ksplit(a.outer, a.K, a.inner);
    const int64_t kchunk = ceil_div(a.K, pieces);
    std::vector<opmath_t> m(pieces * n_out), s(pieces * n_out),
        t(DIAG ? pieces * n_out : 1);
    const int64_t grain = std::max<int64_t>(
        1, kParallelElems / (std::min(kchunk, a.K) * a.inner));
    parallel_for(0, a.outer * pieces, grain, [&](int64_t b, int64_t e) {
      for (int64_t it = b; it < e; ++it) {
        const int64_t piece = it / a.outer, o = it % a.outer;
        const int64_t k0 = piece * kchunk, k1 = std::min(a.K, k0 + kchunk);
        const int64_t base = piece * n_out + o * a.inner;
        opmath_t* tt = DIAG ? t.data() + base : nullptr;
        if (k0 >= k1) {
          std::fill_n(m.data() + base, a.inner, opmath_t(-INFINITY));
          std::fill_n(s.data() + base, a.inner, opmath_t(0));
          if constexpr (DIAG) std::fill_n(tt, a.inner, opmath_t(0));
          continue;
        }
        samples_state<HAS_Q, DIAG>(
            a, o, k0, k1, m.data() + base, s.data() + base, tt);
      }
    });
    Base::template merge_and_finish<DIAG>(
        a, m.data(), s.data(), t.data(), pieces, n_out);
  }

  enum class Map { None, AcrossOutputs, AcrossSamples };

  template <typename Args>
  static Map choose(const Args& a) {
    if (!offsets_fit(a)) return Map::None;
    if (a.vec_k) return a.K < kShortK ? Map::AcrossOutputs : Map::None;
    if (2 * a.inner > L) return Map::None;
    if (a.K * a.inner < kShortSlabVecs * L) return Map::AcrossOutputs;
    if (slab_dense(a.p, a.K, a.inner) &&
        (!a.q.data || slab_dense(a.q, a.K, a.inner))) {
      return Map::AcrossSamples;
    }
    return Map::None;
  }

  // Runs the reduction if a lane tile fits it; false: the caller's kernels.
  static bool reduce(const ReduceArgs& a) {
    const Map map = choose(a);
    if (map == Map::None) return false;
    const bool q = a.q.data != nullptr;
    if (map == Map::AcrossOutputs) {
      const bool dense = slabs_dense(a.p, a) && (!q || slabs_dense(a.q, a));
      if (a.ess) { // diagnostics are rare: the general loads only
        q ? reduce_across_outputs<true, true, false>(a)
          : reduce_across_outputs<false, true, false>(a);
      } else if (dense && L % a.inner == 0 &&
                 (q ? split_reduce<true>(a) : split_reduce<false>(a))) {
        // done: slabs of 2 to 8 samples split in registers
      } else if (dense && a.inner == 1 && LaneShuffles<V>::kFastTranspose) {
        q ? reduce_rows_transposed<true>(a) : reduce_rows_transposed<false>(a);
      } else if (dense) {
        q ? reduce_across_outputs<true, false, true>(a)
          : reduce_across_outputs<false, false, true>(a);
      } else {
        q ? reduce_across_outputs<true, false, false>(a)
          : reduce_across_outputs<false, false, false>(a);
      }
    } else {
      if (a.ess) {
        q ? reduce_across_samples<true, true>(a)
          : reduce_across_samples<false, true>(a);
      } else {
        q ? reduce_across_samples<true, false>(a)
          : reduce_across_samples<false, false>(a);
      }
    }
    return true;
  }

  // ---- weights over the element stream --------------------------------------

  // Where each vector of a periodic element stream takes its per-output
  // values (shift, log_norm, g): `count` consecutive outputs from `base`
  // (relative to the stream's first output), lane l taking the one at
  // base + rel[l]. One contiguous load and one lane permutation per value,
  // where a gather would fetch every lane on its own (NOTES.md CPU 16). In
  // a dense slab stream consecutive elements step their output by +1 or
  // wrap back within a slab, so the L lanes of a vector always lie within L
  // outputs of each other; `ok` says so (it cannot fail for dense slabs).
  struct LaneSources {
    int64_t period = 0; // vectors
    std::vector<int64_t> base, count;
    std::vector<idx_t> rel; // period * L
    bool ok = true;

    // out(e): the output of element e of a period (relative, >= 0).
    template <typename OutOf>
    LaneSources(int64_t vectors, OutOf out)
        : period(vectors), base(vectors), count(vectors), rel(vectors * L) {
      for (int64_t v = 0; v < vectors; ++v) {
        int64_t lo = out(v * L), hi = lo;
        for (int64_t l = 1; l < L; ++l) {
          lo = std::min(lo, out(v * L + l));
          hi = std::max(hi, out(v * L + l));
        }
        ok = ok && hi - lo < L;
        base[v] = lo;
        count[v] = std::min<int64_t>(L, hi - lo + 1);
        for (int64_t l = 0; l < L; ++l) rel[v * L + l] = static_cast<idx_t>(out(v * L + l) - lo);
      }
    }
  };

  // The L lanes' values of per-output array x for vector pv of `src`.
  // Inlined: out of line it was a call through the PLT, three per vector of
  // a weights stream (NOTES.md CPU 41).
  C10_ALWAYS_INLINE static V lane_values(const opmath_t* x, const LaneSources& src, int64_t pv) {
    return LaneShuffles<V>::permute(
        V::loadu(x + src.base[pv], src.count[pv]), VI::loadu(src.rel.data() + pv * L));
  }

  // n contiguous elements P[0..n) (Q, OP, OQ alike) whose vector v takes its
  // stats from sh/ln and its g from gv (opmath, per output; null: g = 1) as
  // `src` says for vector v % src.period. The stream's last vector may be
  // partial; the elements' lanes past n are neither read nor written.
  template <bool HAS_Q>
  static void weights_stream(
      const WeightsArgs& a, const scalar_t* P, const scalar_t* Q,
      scalar_t* OP, scalar_t* OQ, int64_t n, bool stream, const opmath_t* sh,
      const opmath_t* ln, const opmath_t* gv, const LaneSources& src) {
    const V beta(static_cast<opmath_t>(a.beta));
    const int64_t period = src.period;
    // A period of one vector (inner divides L) takes its values once.
    V sh1(0), ln1(0), g1(1);
    if (period == 1) {
      sh1 = lane_values(sh, src, 0);
      ln1 = lane_values(ln, src, 0);
      if (gv) g1 = lane_values(gv, src, 0);
    }
    // beta = 1: no product, as in Kernels::weights_run.
    auto run = [&](auto scaled) {
      auto step = [&](int64_t j, int64_t c, int64_t pv) {
        if constexpr (!HAS_Q) IO::prefetch_ahead(P + j); // CPU 35: w form only
        V x = c == L ? IO::load(P + j) : IO::load(P + j, c);
        if constexpr (HAS_Q) x = x - (c == L ? IO::load(Q + j) : IO::load(Q + j, c));
        if constexpr (decltype(scaled)::value) x = x * beta;
        V shv = sh1, lnv = ln1, g = g1;
        if (period > 1) {
          shv = lane_values(sh, src, pv);
          lnv = lane_values(ln, src, pv);
          if (gv) g = lane_values(gv, src, pv);
        }
        const V wn = Lane::weight(x - shv, lnv);
        const V w = gv ? wn * g : wn;
        if (OP) IO::store_out(OP + j, w, c, stream);
        if (OQ) IO::store_out(OQ + j, Base::q_grad(a.mode, w, wn), c, stream);
      };
      int64_t j = 0, pv = 0;
      for (; j + L <= n; j += L) {
        step(j, L, pv);
        if (++pv == period) pv = 0;
      }
      if (j < n) step(j, n - j, pv);
    };
    a.beta != 1.0 ? run(std::true_type{}) : run(std::false_type{});
  }

  static bool out_dense(const WeightsArgs& a) {
    Strided o;
    o.so = a.out_so, o.sk = a.out_sk, o.si = a.out_si;
    return slab_dense(o, a.K, a.inner);
  }

  // g of outputs [o0, o0 + slabs) x [0, inner), widened, into buf (slab-major).
  static void widen_g(
      const WeightsArgs& a, const scalar_t* g, int64_t o0, int64_t slabs,
      opmath_t* buf) {
    for (int64_t o = 0; o < slabs; ++o) {
      for (int64_t i = 0; i < a.inner; ++i) {
        buf[o * a.inner + i] =
            static_cast<opmath_t>(g[(o0 + o) * a.g_so + i * a.g_si]);
      }
    }
  }

  // Where the weights stream reads g (opmath, per output) from: in place
  // where it needs no widening and lies dense in output order (no copy per
  // tile: a strided scalar load per value cost about a third of a slab
  // tile's instructions, NOTES.md CPU 41), else a buffer widened per tile,
  // or once where every slab's g is the same (a broadcast scalar, the g of
  // a .sum(), or a row shared by the batch).
  struct GSource {
    const opmath_t* direct = nullptr;
    bool buffered = false, broadcast = false;
    GSource(const WeightsArgs& a, const scalar_t* g) {
      if (!g) return;
      if constexpr (!IO::kWiden) {
        if ((a.g_si == 1 || a.inner == 1) && a.g_so == a.inner) {
          direct = g;
          return;
        }
      }
      buffered = true;
      broadcast = a.g_so == 0; // every slab's g alike: one copy per chunk
    }
    // g from output o0 on; buf: this thread's widened copy.
    const opmath_t* at(const std::vector<opmath_t>& buf, int64_t o0) const {
      return direct ? direct + o0 : buffered ? buf.data() : nullptr;
    }
  };

  template <bool HAS_Q>
  static bool weights_slab_tiles(const WeightsArgs& a, int64_t tiles) {
    // A tile is L slabs of K * inner elements: period K * inner vectors;
    // element e of a tile is output (e / slab) * inner + e % inner.
    const int64_t slab = a.K * a.inner;
    const LaneSources src(slab, [&](int64_t e) {
      return (e / slab) * a.inner + e % a.inner;
    });
    if (!src.ok) return false;
    const typename Base::WeightsPtrs ptr(a);
    const auto *p = ptr.p, *q = ptr.q, *g = ptr.g;
    const opmath_t *shift = ptr.shift, *log_norm = ptr.log_norm;
    auto *op = ptr.op, *oq = ptr.oq;
    const int64_t grain = std::max<int64_t>(1, kParallelElems / (L * slab));
    const GSource gs(a, g);
    parallel_for(0, tiles, grain, [&](int64_t b, int64_t e) {
      std::vector<opmath_t> gbuf(gs.buffered ? L * a.inner : 0);
      if (gs.broadcast) widen_g(a, g, 0, L, gbuf.data()); // the same every tile
      for (int64_t tile = b; tile < e; ++tile) {
        const int64_t o0 = tile * L, off = o0 * a.out_so;
        if (gs.buffered && !gs.broadcast) widen_g(a, g, o0, L, gbuf.data());
        weights_stream<HAS_Q>(
            a, p + o0 * a.p.so, HAS_Q ? q + o0 * a.q.so : nullptr,
            op ? op + off : nullptr, oq ? oq + off : nullptr, L * slab,
            ptr.stream, shift + o0 * a.inner, log_norm + o0 * a.inner,
            gs.at(gbuf, o0 * a.inner), src);
      }
      fence_streams(ptr.stream);
    });
    return true;
  }

  template <bool HAS_Q>
  static bool weights_per_slab(const WeightsArgs& a) {
    // One slab's inner outputs: period PV = inner / gcd(inner, L) vectors of
    // G = PV L elements; pieces of a slab start at multiples of G.
    const int64_t PV = a.inner / lane_gcd(a.inner, L), G = PV * L;
    const LaneSources src(PV, [&](int64_t e) { return e % a.inner; });
    if (!src.ok) return false;
    const int64_t n = a.K * a.inner;
    const int64_t chunk = std::max<int64_t>(1, kParallelElems / G) * G;
    const int64_t chunks = ceil_div(n, chunk);
    const typename Base::WeightsPtrs ptr(a);
    const auto *p = ptr.p, *q = ptr.q, *g = ptr.g;
    const opmath_t *shift = ptr.shift, *log_norm = ptr.log_norm;
    auto *op = ptr.op, *oq = ptr.oq;
    const GSource gs(a, g);
    parallel_for(0, a.outer * chunks, 1, [&](int64_t b, int64_t e) {
      std::vector<opmath_t> gbuf(gs.buffered ? a.inner : 0);
      if (gs.broadcast) widen_g(a, g, 0, 1, gbuf.data()); // the same every slab
      for (int64_t it = b; it < e; ++it) {
        const int64_t o = it / chunks, e0 = (it % chunks) * chunk;
        const int64_t off = o * a.out_so + e0;
        if (gs.buffered && !gs.broadcast) widen_g(a, g, o, 1, gbuf.data());
        weights_stream<HAS_Q>(
            a, p + o * a.p.so + e0, HAS_Q ? q + o * a.q.so + e0 : nullptr,
            op ? op + off : nullptr, oq ? oq + off : nullptr,
            std::min(chunk, n - e0), ptr.stream, shift + o * a.inner,
            log_norm + o * a.inner, gs.at(gbuf, o * a.inner), src);
      }
      fence_streams(ptr.stream);
    });
    return true;
  }

  // Runs the weights pass where a lane map runs the reduction and the
  // operands are dense slabs: long slabs stream one by one, short ones in
  // tiles of L slabs. Returns the first slab (outer index) the caller must
  // still do (the tail slabs short of a tile), or -1 for all of them.
  static int64_t weights(const WeightsArgs& a) {
    if (choose(a) == Map::None || !out_dense(a) ||
        !slab_dense(a.p, a.K, a.inner) ||
        (a.q.data && !slab_dense(a.q, a.K, a.inner))) {
      return -1;
    }
    const bool q = a.q.data != nullptr;
    const int64_t slab = a.K * a.inner;
    if (slab >= kStreamMinVecs * L) {
      const bool done = q ? weights_per_slab<true>(a) : weights_per_slab<false>(a);
      return done ? a.outer : -1;
    }
    // Slabs must follow each other densely for the stream of a tile.
    const bool dense = a.outer == 1 ||
        (a.p.so == slab && (!q || a.q.so == slab) && a.out_so == slab);
    if (!dense) return -1;
    const int64_t tiles = a.outer / L;
    if (tiles == 0) return -1;
    const bool done = q ? weights_slab_tiles<true>(a, tiles)
                        : weights_slab_tiles<false>(a, tiles);
    return done ? tiles * L : -1;
  }
};

} // namespace CPU_CAPABILITY
} // namespace iwae_fused::cpu
