// The CPU kernels, written once and compiled once per instruction set: each
// kernels_<isa>.cpp defines CPU_CAPABILITY (and the target) and includes this
// file, which lands in namespace iwae_fused::cpu::CPU_CAPABILITY.
//
// Geometry: every operand is [outer, K, inner] with strides (kernel_api.h).
//  * columns (si == 1; e.g. [K, B] reduced over dim 0): a tile of W outputs
//    side by side is one vector lane each; samples arrive row by row, so every
//    memory access is a contiguous run of W elements.
//  * rows (sk == 1; e.g. [B, K] reduced over dim 1): the L lanes of a vector
//    hold L samples of one output, each lane an online state of its own,
//    merged across lanes at the end.
// Either way the inputs are read from memory once: a block of log-weights
// (log_p - log_q, widened to opmath) goes to an L1-resident buffer while its
// max is taken, then the block's exponentials are summed against the updated
// max. One exp per element plus one rescale per block, where the textbook
// online update would pay two exps per element.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "kernel_api.h"
#include "vec_ops.h"
#include "stream_stores.h"
// after vec_ops.h, which defines IWAE_ISA
#include "lane_shuffles.h"

namespace iwae_fused::cpu {
inline namespace CPU_CAPABILITY {

constexpr int64_t kTileVecs = 16; // columns: outputs per tile, in vectors
constexpr int64_t kBlock = 16; // rows of a column block / vectors of a row chunk
constexpr int64_t kOneBlockVecs = 32; // see Kernels::tile_width
constexpr int64_t kNarrowMaxK = 8; // see Kernels::tile_width
constexpr int64_t kMinNarrowVecs = 4; // see Kernels::tile_width
constexpr int64_t kWeightsTile = 2048; // columns' weights pass: columns per tile
// The columns' weights pass for K > kBlock: bytes of stats (shift and
// log_norm) per tile, which with g (half as much again) stay in L2 over the
// tile's K rows; and the narrowest tile it takes.
constexpr int64_t kLongWeightsStats = 256 * 1024;
constexpr int64_t kMinLongWeightsTile = 8192;
constexpr int64_t kSpanTiles = 8; // long columns: tiles per span (Kernels::reduce_cols)
constexpr int64_t kSpansPerThread = 4; // long columns: fewer spans, tile at a time
// Below this many elements one thread does it all: at 2-16 threads the
// fork/join costs a few microseconds, the time of ~30k exps.
constexpr int64_t kParallelElems = 32768;
constexpr int64_t kMinSplitK = 256; // samples per piece when K is split

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The threads a parallel_for started here would spread over: one inside
// another parallel region, where at::parallel_for runs inline.
inline int64_t worker_threads() {
  return at::in_parallel_region() ? 1 : at::get_num_threads();
}

// The first of widest, widest / 2, ... (never below narrowest) that
// `fits`, or narrowest where none wider does: how every tile and span here
// gives up width for enough work items per thread, or for few enough
// streams in flight.
template <typename Fits>
int64_t narrowed(int64_t widest, int64_t narrowest, const Fits& fits) {
  int64_t w = widest;
  while (w > narrowest && !fits(w)) w = std::max(w / 2, narrowest);
  return w;
}

// at::parallel_for with denormals flushed in every chunk, on whichever thread
// runs it (denormals.h: an underflowing exp costs a microcode assist). Never
// a guard around a parallel region: the threads a pool creates inherit the
// creating thread's MXCSR, and would keep the flush for good (a test in
// test_numerics.py caught exactly that).
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
    FlushDenormals ftz;
    f(b, e);
  });
}

// How many pieces to cut K into so that `items` independent reductions of K
// samples (each `width` elements wide) keep every thread busy.
inline int64_t choose_ksplit(int64_t items, int64_t K, int64_t width) {
  const int64_t threads = worker_threads();
  if (items >= threads || items * K * width < kParallelElems) return 1;
  return std::max<int64_t>(
      1, std::min(ceil_div(threads, items), K / kMinSplitK));
}

template <typename scalar_t>
struct LaneTiles; // short_rows.h: slices too short to fill a vector
template <typename scalar_t>
struct DenseRows; // dense_rows.h: the weights pass over dense rows

template <typename scalar_t>
struct Kernels {
  using IO = VecIO<scalar_t>;
  using opmath_t = typename IO::opmath_t;
  using V = typename IO::V;
  using Lane = LaneOps<V>;
  static constexpr int64_t L = IO::L;
  static constexpr int64_t W = kTileVecs * L; // columns per tile

  // ---- reduction ----------------------------------------------------------

  // Folds r buffered rows (buf[j][v], j < r) of nv state vectors (m, s, t)
  // whose block maxima are bmax: one rescale per block and vector, one exp
  // per element. The first block of a state (first = true, the state still
  // empty) takes its max as is: the rescale of an empty state is exp(-inf) =
  // 0 times s = 0, an exp per vector that short slices (one block) would pay
  // per output (NOTES.md CPU 10). Shared by the columns and the lane tiles.
  template <bool DIAG, typename Buf>
  static void absorb_block(
      V* m, V* s, V* t, const V* bmax, Buf& buf, int64_t r, int64_t nv,
      bool first) {
    for (int64_t v = 0; v < nv; ++v) {
      V sh;
      if (first) {
        m[v] = bmax[v];
        sh = Lane::shift(bmax[v]);
      } else if constexpr (DIAG) {
        sh = absorb_max2(m[v], s[v], t[v], bmax[v]);
      } else {
        sh = absorb_max(m[v], s[v], bmax[v]);
      }
      V acc(0), acc2(0);
      for (int64_t j = 0; j < r; ++j) {
        const V e = Lane::exp(buf[j][v] - sh);
        acc = acc + e;
        if constexpr (DIAG) acc2 = acc2 + e * e;
      }
      s[v] = first ? acc : s[v] + acc;
      if constexpr (DIAG) t[v] = first ? acc2 : t[v] + acc2;
    }
  }

  // Where cols_state's loads ask for lines ahead (PF): element offsets from
  // each full vector it loads of row k of p (and q) to the vector it asks
  // for (NOTES.md CPU 47).
  struct Ahead {
    int64_t p = 0, q = 0;
  };

  // States of the w <= W column outputs (o, i0 .. i0 + w) over samples
  // [k0, k1), into m[0..w) and s[0..w) (and the second moment t[0..w) with
  // DIAG). `resume`: m, s (and t) already hold the state over earlier
  // samples, which these extend. PF: every 64-byte line loaded in full
  // vectors asks for the line `ahead` past it into L2.
  template <bool HAS_Q, bool DIAG, bool PF = false>
  static void cols_state(
      const ReduceArgs& a, int64_t o, int64_t i0, int64_t w, int64_t k0,
      int64_t k1, opmath_t* m_out, opmath_t* s_out, opmath_t* t_out,
      bool resume = false, Ahead ahead = {}) {
    const int64_t full = w / L, rem = w % L, nv = ceil_div(w, L);
    const auto* P = static_cast<const scalar_t*>(a.p.data) + o * a.p.so + i0;
    const auto* Q = HAS_Q
        ? static_cast<const scalar_t*>(a.q.data) + o * a.q.so + i0
        : nullptr;
    const V beta(static_cast<opmath_t>(a.beta));
    UninitVecs<V, kTileVecs> m, s, t, bmax;
    UninitTile<V, kBlock, kTileVecs> buf;
    if (resume) { // lanes past w hold 0 and are never stored
      for (int64_t v = 0; v < nv; ++v) {
        const int64_t n = std::min(L, w - v * L);
        m[v] = V::loadu(m_out + v * L, n);
        s[v] = V::loadu(s_out + v * L, n);
        if constexpr (DIAG) t[v] = V::loadu(t_out + v * L, n);
      }
    }
    for (int64_t kb = k0; kb < k1; kb += kBlock) {
      const int64_t r = std::min(kBlock, k1 - kb);
      for (int64_t v = 0; v < nv; ++v) bmax[v] = V(-INFINITY);
      for (int64_t j = 0; j < r; ++j) {
        const scalar_t* pr = P + (kb + j) * a.p.sk;
        const scalar_t* qr = HAS_Q ? Q + (kb + j) * a.q.sk : nullptr;
        for (int64_t v = 0; v < full; ++v) {
          // One request per line: a vector of under 64 bytes (AVX2, the
          // half types) asks on every other load.
          if (PF && (v * L * int64_t(sizeof(scalar_t))) % 64 == 0) {
            IO::prefetch_l2(pr + v * L, ahead.p);
            if constexpr (HAS_Q) IO::prefetch_l2(qr + v * L, ahead.q);
          }
          V x = IO::load(pr + v * L);
          if constexpr (HAS_Q) x = x - IO::load(qr + v * L);
          x = x * beta;
          buf[j][v] = x;
          bmax[v] = Lane::max(x, bmax[v]);
        }
        if (rem) { // lanes past w read 0 and are never stored
          V x = IO::load(pr + full * L, rem);
          if constexpr (HAS_Q) x = x - IO::load(qr + full * L, rem);
          x = x * beta;
          buf[j][full] = x;
          bmax[full] = Lane::max(x, bmax[full]);
        }
      }
      absorb_block<DIAG>(
          m.data(), s.data(), t.data(), bmax.data(), buf, r, nv,
          kb == k0 && !resume);
    }
    for (int64_t v = 0; v < nv; ++v) {
      const int64_t n = std::min(L, w - v * L);
      m[v].store(m_out + v * L, n);
      s[v].store(s_out + v * L, n);
      if constexpr (DIAG) t[v].store(t_out + v * L, n);
    }
  }

  // State of row output (o, i) over samples [k0, k1), contiguous in memory.
  template <bool HAS_Q, bool DIAG>
  static void row_state(
      const ReduceArgs& a, int64_t o, int64_t i, int64_t k0, int64_t k1,
      opmath_t& m_out, opmath_t& s_out, opmath_t& t_out) {
    const auto* P =
        static_cast<const scalar_t*>(a.p.data) + o * a.p.so + i * a.p.si;
    const auto* Q = HAS_Q
        ? static_cast<const scalar_t*>(a.q.data) + o * a.q.so + i * a.q.si
        : nullptr;
    constexpr int64_t C = kBlock * L;
    const V beta(static_cast<opmath_t>(a.beta));
    V m(-INFINITY), s(0), t(0);
    UninitVecs<V, kBlock> buf;
    for (int64_t kb = k0; kb < k1; kb += C) {
      const int64_t c = std::min(C, k1 - kb), full = c / L, rem = c % L;
      V bmax(-INFINITY);
      for (int64_t v = 0; v < full; ++v) {
        V x = IO::load(P + kb + v * L);
        if constexpr (HAS_Q) x = x - IO::load(Q + kb + v * L);
        x = x * beta;
        buf[v] = x;
        bmax = Lane::max(x, bmax);
      }
      if (rem) { // lanes past the row hold -inf: the identity of the state
        V x = IO::load(P + kb + full * L, rem);
        if constexpr (HAS_Q) x = x - IO::load(Q + kb + full * L, rem);
        x = V::set(V(-INFINITY), x * beta, rem); // pad after scaling
        buf[full] = x;
        bmax = Lane::max(x, bmax);
      }
      if constexpr (DIAG) {
        const V sh = absorb_max2(m, s, t, bmax);
        V acc(0), acc2(0);
        for (int64_t v = 0; v < full + (rem > 0); ++v) {
          const V e = Lane::exp(buf[v] - sh);
          acc = acc + e;
          acc2 = acc2 + e * e;
        }
        s = s + acc;
        t = t + acc2;
      } else {
        const V sh = absorb_max(m, s, bmax);
        V acc(0);
        for (int64_t v = 0; v < full + (rem > 0); ++v) {
          acc = acc + Lane::exp(buf[v] - sh);
        }
        s = s + acc;
      }
    }
    // Merge the lanes: the common max first, then one vector rescale.
    opmath_t lanes[L];
    m.store(lanes);
    opmath_t M = lanes[0];
    for (int64_t j = 1; j < L; ++j) M = LaneOps<opmath_t>::max(M, lanes[j]);
    const V r = rescale(m, V(M));
    (s * r).store(lanes);
    opmath_t S = 0;
    for (int64_t j = 0; j < L; ++j) S += lanes[j];
    m_out = M;
    s_out = S;
    if constexpr (DIAG) {
      (t * (r * r)).store(lanes);
      opmath_t T2 = 0;
      for (int64_t j = 0; j < L; ++j) T2 += lanes[j];
      t_out = T2;
    }
  }

  // The stats (shift, log sum) and out = shift + log sum - log K for n
  // consecutive outputs starting at output idx.
  static void finish(
      const ReduceArgs& a, int64_t idx, const opmath_t* m, const opmath_t* s,
      const opmath_t* t, int64_t n) {
    if (a.ess) { // diagnostics: a few scalars per output
      auto* ess = static_cast<scalar_t*>(a.ess);
      auto* max_w = static_cast<scalar_t*>(a.max_w);
      for (int64_t j = 0; j < n; ++j) {
        opmath_t e, mw;
        diagnostics(m[j], s[j], t[j], e, mw);
        ess[idx + j] = static_cast<scalar_t>(e);
        max_w[idx + j] = static_cast<scalar_t>(mw);
      }
    }
    const V log_k(std::log(static_cast<opmath_t>(a.K)));
    const V beta(static_cast<opmath_t>(a.beta));
    auto* out = static_cast<scalar_t*>(a.out);
    auto* shift = static_cast<opmath_t*>(a.stats);
    opmath_t* log_norm = shift ? shift + a.outer * a.inner : nullptr;
    for (int64_t j = 0; j < n; j += L) {
      const int64_t c = std::min(L, n - j);
      const V sh = Lane::shift(V::loadu(m + j, c));
      const V sv = V::loadu(s + j, c);
      const V ls = Lane::log(sv);
      if (shift) {
        sh.store(shift + idx + j, c);
        (a.plain_log_sum ? ls : Lane::log_norm_of(sv, ls))
            .store(log_norm + idx + j, c);
      }
      if (out) IO::store(out + idx + j, (sh + (ls - log_k)) / beta, c);
    }
  }

  // Merge `pieces` partial states laid out [piece][output] into the first.
  template <bool DIAG>
  static void merge_pieces(
      opmath_t* m, opmath_t* s, opmath_t* t, int64_t pieces, int64_t n_out) {
    for (int64_t p = 1; p < pieces; ++p) {
      for (int64_t j = 0; j < n_out; ++j) {
        const int64_t at = p * n_out + j;
        if constexpr (DIAG) {
          merge2(m[j], s[j], t[j], m[at], s[at], t[at]);
        } else {
          merge(m[j], s[j], m[at], s[at]);
        }
      }
    }
  }

  // Columns per tile: kTileVecs vectors, except for short slices (K <= 8).
  // A tile then reads its K rows (2K with log_q) in bursts of the tile's
  // width, once; narrower tiles, about kOneBlockVecs vectors in flight per
  // tile, ran up to 1.3x faster there out of cache (NOTES.md CPU 11). Not
  // below kMinNarrowVecs: a tile of 1-2 vectors pays its per-tile work (the
  // finish, the state stores) on too few outputs and reads too short a
  // burst per row (CPU 19). From K = 9 on the tile is not narrowed at all:
  // long slices need the full tile in and out of cache (CPU 11).
  static int64_t tile_width(const ReduceArgs& a) {
    if (a.K > kNarrowMaxK) return W;
    const int64_t streams = a.K * (a.q.data ? 2 : 1);
    return L * narrowed(kTileVecs, kMinNarrowVecs, [&](int64_t vecs) {
      return vecs * streams <= kOneBlockVecs;
    });
  }

  // The serial tail of a split-K reduction, after its parallel region: merge
  // the pieces, then finish, with denormals flushed (see parallel_for).
  template <bool DIAG>
  static void merge_and_finish(
      const ReduceArgs& a, opmath_t* m, opmath_t* s, opmath_t* t,
      int64_t pieces, int64_t n_out) {
    FlushDenormals ftz;
    merge_pieces<DIAG>(m, s, t, pieces, n_out);
    finish(a, 0, m, s, t, n_out);
  }

  template <bool HAS_Q, bool DIAG>
  static void reduce_cols(const ReduceArgs& a) {
    const int64_t tw = tile_width(a);
    const int64_t ntiles = ceil_div(a.inner, tw);
    const int64_t items = a.outer * ntiles;
    const int64_t width = std::min(a.inner, tw);
    const int64_t pieces = choose_ksplit(items, a.K, width);
    const int64_t kchunk = ceil_div(a.K, pieces);
    if (pieces == 1 && a.K > kBlock && ntiles > 1) {
      // Long columns: a span of tiles at a time, one block of samples
      // across the whole span before the next, the span's states kept in
      // between; at most kBlock rows (2 kBlock with log_q) stream at once,
      // each a contiguous run of the span's width, where a tile at a time
      // streams all K rows for a quarter of a page each. And every line
      // loaded asks for the one the walk reads a tile later: the same row's
      // next tile, or from the span's last tile the next block's row at its
      // first tile; so it arrives while this tile's exponentials run
      // (NOTES.md CPU 47; a tile at a time over all K rows, with the same
      // prefetch, was slower there: CPU 31).
      // Not where it would leave fewer than kSpansPerThread spans a thread.
      const int64_t want = kSpansPerThread * worker_threads();
      const int64_t span = narrowed(std::min(kSpanTiles, ntiles), 1, [&](int64_t n) {
        return a.outer * ceil_div(ntiles, n) >= want;
      });
      if (span > 1) {
        const int64_t per_o = ceil_div(ntiles, span);
        const int64_t grain =
            std::max<int64_t>(1, kParallelElems / (a.K * width * span));
        parallel_for(0, a.outer * per_o, grain, [&](int64_t b, int64_t e) {
          std::vector<opmath_t> m(span * W), s(span * W), t(DIAG ? span * W : 1);
          for (int64_t it = b; it < e; ++it) {
            const int64_t o = it / per_o, t0 = (it % per_o) * span;
            const int64_t t1 = std::min(ntiles, t0 + span);
            for (int64_t kb = 0; kb < a.K; kb += kBlock) {
              const int64_t k1 = std::min(a.K, kb + kBlock);
              for (int64_t tile = t0; tile < t1; ++tile) {
                const int64_t i0 = tile * tw, w = std::min(tw, a.inner - i0);
                const int64_t at = (tile - t0) * W;
                Ahead ahead{tw, tw}; // the next tile, same rows
                if (tile + 1 == t1 && k1 < a.K) { // next block, first tile
                  const int64_t back = (t0 - tile) * tw;
                  ahead = {kBlock * a.p.sk + back, kBlock * a.q.sk + back};
                } else if (tile + 1 == t1) { // the next span, first block
                  ahead = {tw - kb * a.p.sk, tw - kb * a.q.sk};
                }
                cols_state<HAS_Q, DIAG, true>(
                    a, o, i0, w, kb, k1, m.data() + at, s.data() + at,
                    t.data() + (DIAG ? at : 0), kb > 0, ahead);
              }
            }
            for (int64_t tile = t0; tile < t1; ++tile) {
              const int64_t i0 = tile * tw, w = std::min(tw, a.inner - i0);
              const int64_t at = (tile - t0) * W;
              finish(a, o * a.inner + i0, m.data() + at, s.data() + at,
                     t.data() + (DIAG ? at : 0), w);
            }
          }
        });
        return;
      }
    }
    if (pieces == 1) {
      const int64_t grain = std::max<int64_t>(1, kParallelElems / (a.K * width));
      parallel_for(0, items, grain, [&](int64_t b, int64_t e) {
        opmath_t m[W], s[W], t[DIAG ? W : 1];
        for (int64_t it = b; it < e; ++it) {
          const int64_t o = it / ntiles, i0 = (it % ntiles) * tw;
          const int64_t w = std::min(tw, a.inner - i0);
          if (ntiles > 1) {
            // Tiles of the same rows follow each other: every line loaded
            // asks for its row's line one tile on, or from the last tile
            // the next slab's first (NOTES.md CPU 50).
            const Ahead ahead = i0 + tw < a.inner ? Ahead{tw, tw}
                                                  : Ahead{a.p.so - i0, a.q.so - i0};
            cols_state<HAS_Q, DIAG, true>(a, o, i0, w, 0, a.K, m, s, t, false, ahead);
          } else {
            cols_state<HAS_Q, DIAG>(a, o, i0, w, 0, a.K, m, s, t);
          }
          finish(a, o * a.inner + i0, m, s, t, w);
        }
      });
      return;
    }
    // Few outputs, many samples: split K, then merge the pieces' states.
    const int64_t n_out = a.outer * a.inner;
    std::vector<opmath_t> m(pieces * n_out), s(pieces * n_out),
        t(DIAG ? pieces * n_out : 1);
    parallel_for(0, items * pieces, 1, [&](int64_t b, int64_t e) {
      for (int64_t it = b; it < e; ++it) {
        const int64_t piece = it / items, tile = it % items;
        const int64_t o = tile / ntiles, i0 = (tile % ntiles) * tw;
        const int64_t w = std::min(tw, a.inner - i0);
        const int64_t k0 = piece * kchunk, k1 = std::min(a.K, k0 + kchunk);
        const int64_t base = piece * n_out + o * a.inner + i0;
        opmath_t* tt = DIAG ? t.data() + base : nullptr;
        if (k0 >= k1) {
          std::fill_n(m.data() + base, w, opmath_t(-INFINITY));
          std::fill_n(s.data() + base, w, opmath_t(0));
          if constexpr (DIAG) std::fill_n(tt, w, opmath_t(0));
          continue;
        }
        cols_state<HAS_Q, DIAG>(
            a, o, i0, w, k0, k1, m.data() + base, s.data() + base, tt);
      }
    });
    merge_and_finish<DIAG>(a, m.data(), s.data(), t.data(), pieces, n_out);
  }

  template <bool HAS_Q, bool DIAG>
  static void reduce_rows(const ReduceArgs& a) {
    const int64_t rows = a.outer * a.inner;
    const int64_t pieces = choose_ksplit(rows, a.K, 1);
    if (pieces == 1) {
      const int64_t grain = std::max<int64_t>(1, kParallelElems / a.K);
      parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
        // Finish in batches so the final log and stores are vectorised.
        constexpr int64_t kBatch = 64;
        opmath_t m[kBatch], s[kBatch], t[kBatch];
        for (int64_t r0 = b; r0 < e; r0 += kBatch) {
          const int64_t n = std::min(kBatch, e - r0);
          for (int64_t j = 0; j < n; ++j) {
            const int64_t r = r0 + j;
            row_state<HAS_Q, DIAG>(
                a, r / a.inner, r % a.inner, 0, a.K, m[j], s[j], t[j]);
          }
          finish(a, r0, m, s, t, n);
        }
      });
      return;
    }
    const int64_t kchunk = ceil_div(a.K, pieces);
    std::vector<opmath_t> m(pieces * rows), s(pieces * rows), t(pieces * rows);
    parallel_for(0, rows * pieces, 1, [&](int64_t b, int64_t e) {
      for (int64_t it = b; it < e; ++it) {
        const int64_t piece = it / rows, r = it % rows;
        const int64_t k0 = piece * kchunk, k1 = std::min(a.K, k0 + kchunk);
        opmath_t& mm = m[piece * rows + r];
        opmath_t& ss = s[piece * rows + r];
        opmath_t& tt = t[piece * rows + r];
        if (k0 >= k1) {
          mm = -INFINITY, ss = 0, tt = 0;
          continue;
        }
        row_state<HAS_Q, DIAG>(a, r / a.inner, r % a.inner, k0, k1, mm, ss, tt);
      }
    });
    merge_and_finish<DIAG>(a, m.data(), s.data(), t.data(), pieces, rows);
  }

  static void reduce(const ReduceArgs& a) {
    if (a.outer * a.inner == 0) return;
    if (LaneTiles<scalar_t>::reduce(a)) return;
    const bool q = a.q.data != nullptr;
    if (a.ess) { // diagnostics are rare: one instantiation, log_q read as given
      a.vec_k ? (q ? reduce_rows<true, true>(a) : reduce_rows<false, true>(a))
              : (q ? reduce_cols<true, true>(a) : reduce_cols<false, true>(a));
      return;
    }
    if (a.vec_k) {
      q ? reduce_rows<true, false>(a) : reduce_rows<false, false>(a);
    } else {
      q ? reduce_cols<true, false>(a) : reduce_cols<false, false>(a);
    }
  }

  // ---- element-wise weights -----------------------------------------------

  // A weights pass's operands, typed: the stats are [2, outer * inner]
  // (shift, then log_norm); any of q, g, op, oq may be null.
  struct WeightsPtrs {
    const scalar_t *p, *q, *g;
    const opmath_t *shift, *log_norm;
    scalar_t *op, *oq;
    explicit WeightsPtrs(const WeightsArgs& a)
        : p(static_cast<const scalar_t*>(a.p.data)),
          q(static_cast<const scalar_t*>(a.q.data)),
          g(static_cast<const scalar_t*>(a.g)),
          shift(static_cast<const opmath_t*>(a.stats)),
          log_norm(shift ? shift + a.outer * a.inner : nullptr),
          op(static_cast<scalar_t*>(a.out_p)),
          oq(static_cast<scalar_t*>(a.out_q)),
          stream(IO::kCanStream && streams_gradients(
              a.outer * a.K * a.inner, sizeof(scalar_t), a.q.data ? 2 : 1,
              (a.out_p ? 1 : 0) + (a.out_q ? 1 : 0))) {}
    bool stream; // the gradients' stores bypass the cache (stream_stores.h)
  };

  // What out_q holds for the weight w = g wn (WeightsArgs::mode): -g w;
  // g (w^2 - w) = g w (w - 1); g (w - w^2 - w) = -g w w.
  static V q_grad(int mode, V w, V wn) {
    return mode == kNegWeight ? V(0) - w
        : mode == kDregSquare ? w * (wn - V(1))
                              : V(0) - w * wn;
  }

  // One contiguous run of n elements: log_w from P (and Q), weights against
  // the per-element stats and g given by the caller's lambdas.
  template <bool HAS_Q, typename StatsAt, typename GAt>
  static void weights_run(
      const WeightsArgs& a, const scalar_t* P, const scalar_t* Q,
      scalar_t* OP, scalar_t* OQ, int64_t n, bool stream, StatsAt stats_at,
      GAt g_at) {
    // Full vectors, then one partial: with c a constant L in the first loop
    // the count checks of every load and store fold away.
    // At alpha = 0 (beta = 1) the loop runs without the product x * beta
    // (exactly x): uncontracted (setup.py), it would cost a dependent
    // instruction per vector on the hot path (NOTES.md numerics 2).
    const V beta(static_cast<opmath_t>(a.beta));
    auto run = [&](auto scaled) {
      auto step = [&](int64_t j, int64_t c) {
        if constexpr (!HAS_Q) IO::prefetch_ahead(P + j); // CPU 35: w form only
        V x = c == L ? IO::load(P + j) : IO::load(P + j, c);
        if constexpr (HAS_Q) x = x - (c == L ? IO::load(Q + j) : IO::load(Q + j, c));
        if constexpr (decltype(scaled)::value) x = x * beta;
        const auto [sh, ls] = stats_at(j, c);
        const V wn = Lane::weight(x - sh, ls);
        const V w = a.g ? wn * g_at(j, c) : wn;
        if (OP) IO::store_out(OP + j, w, c, stream);
        if (OQ) IO::store_out(OQ + j, q_grad(a.mode, w, wn), c, stream);
      };
      int64_t j = 0;
      for (; j + L <= n; j += L) step(j, L);
      if (j < n) step(j, n - j);
    };
    a.beta != 1.0 ? run(std::true_type{}) : run(std::false_type{});
  }

  // Columns per tile of the columns' weights pass over `slabs` slabs, or 0
  // for runs over all of inner. K <= kBlock: kWeightsTile, halved (down to 4
  // vectors) while that leaves fewer than 4 tiles per thread. K > kBlock:
  // as many columns as kLongWeightsStats bytes of stats hold, halved down to
  // kMinLongWeightsTile; 0 where even that leaves fewer than 4 tiles per
  // thread (tiles of 2,048 columns, bursts of 8 KB per row, were slower than
  // the runs there: NOTES.md CPU 12).
  static int64_t weights_tile(const WeightsArgs& a, int64_t slabs) {
    const int64_t want = 4 * worker_threads();
    const bool few = a.K <= kBlock;
    auto enough = [&](int64_t tw) { return slabs * ceil_div(a.inner, tw) >= want; };
    const int64_t tw = few
        ? narrowed(kWeightsTile, 4 * L, enough)
        : narrowed(kLongWeightsStats / (2 * int64_t(sizeof(opmath_t))), kMinLongWeightsTile, enough);
    return few || enough(tw) ? tw : 0;
  }

  // The slabs (outer indices) [o_begin, outer).
  template <bool HAS_Q>
  static void weights_impl(const WeightsArgs& a, int64_t o_begin) {
    const WeightsPtrs ptr(a);
    const auto *p = ptr.p, *q = ptr.q, *g = ptr.g;
    const opmath_t *shift = ptr.shift, *log_norm = ptr.log_norm;
    auto *op = ptr.op, *oq = ptr.oq;
    auto out_at = [&](scalar_t* base, int64_t off) {
      return base ? base + off : nullptr;
    };
    if (!a.vec_k) {
      // Columns: runs of w contiguous elements of row (o, k) from column i0;
      // stats and g are vectors over the run.
      auto run = [&](int64_t o, int64_t k, int64_t i0, int64_t w) {
        const opmath_t* sh = shift + o * a.inner + i0;
        const opmath_t* ls = log_norm + o * a.inner + i0;
        const scalar_t* gg = g ? g + o * a.g_so + i0 * a.g_si : nullptr;
        const int64_t off = o * a.out_so + k * a.out_sk + i0;
        weights_run<HAS_Q>(
            a, p + o * a.p.so + k * a.p.sk + i0,
            HAS_Q ? q + o * a.q.so + k * a.q.sk + i0 : nullptr,
            out_at(op, off), out_at(oq, off), w, ptr.stream,
            [&](int64_t j, int64_t c) {
              return std::make_pair(V::loadu(sh + j, c), V::loadu(ls + j, c));
            },
            [&](int64_t j, int64_t c) {
              if (a.g_si == 0) return V(static_cast<opmath_t>(gg[0]));
              return c == L ? IO::load(gg + j) : IO::load(gg + j, c);
            });
      };
      if (const int64_t tw = weights_tile(a, a.outer - o_begin); tw > 0) {
        // A tile of columns, all K rows of it, so the tile's stats and g
        // come from memory once and from cache K - 1 times, where runs over
        // all of inner re-read them per row (NOTES.md CPU 12, CPU 48).
        const int64_t ntiles = ceil_div(a.inner, tw);
        const int64_t grain =
            std::max<int64_t>(1, kParallelElems / (a.K * std::min(tw, a.inner)));
        parallel_for(
            o_begin * ntiles, a.outer * ntiles, grain, [&](int64_t b, int64_t e) {
              for (int64_t it = b; it < e; ++it) {
                const int64_t o = it / ntiles, i0 = (it % ntiles) * tw;
                for (int64_t k = 0; k < a.K; ++k) {
                  run(o, k, i0, std::min(tw, a.inner - i0));
                }
              }
              fence_streams(ptr.stream);
            });
        return;
      }
      // Too few columns for tiles of kMinLongWeightsTile: one run per
      // (o, k) over all of inner; long streams, and K runs to share among
      // the threads.
      const int64_t grain = std::max<int64_t>(1, kParallelElems / a.inner);
      parallel_for(o_begin * a.K, a.outer * a.K, grain, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) run(r / a.K, r % a.K, 0, a.inner);
        fence_streams(ptr.stream);
      });
      return;
    }
    // Rows: one run per output, K contiguous; stats and g are scalars.
    const int64_t rows = a.outer * a.inner;
    const int64_t grain = std::max<int64_t>(1, kParallelElems / a.K);
    parallel_for(o_begin * a.inner, rows, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t o = r / a.inner, i = r % a.inner;
        const auto st = std::make_pair(V(shift[r]), V(log_norm[r]));
        const V gv(g ? static_cast<opmath_t>(g[o * a.g_so + i * a.g_si])
                     : opmath_t(1));
        const int64_t off = o * a.out_so + i * a.out_si;
        weights_run<HAS_Q>(
            a, p + o * a.p.so + i * a.p.si,
            HAS_Q ? q + o * a.q.so + i * a.q.si : nullptr, out_at(op, off),
            out_at(oq, off), a.K, ptr.stream, [&](int64_t, int64_t) { return st; },
            [&](int64_t, int64_t) { return gv; });
      }
      fence_streams(ptr.stream);
    });
  }

  static void weights(const WeightsArgs& a) {
    if (a.outer * a.inner * a.K == 0) return;
    if (WeightsPtrs(a).stream) count_streamed_call();
    // Dense rows, then short slices (the lane tiles) do what they can, this
    // the rest.
    int64_t o_begin = DenseRows<scalar_t>::weights(a);
    if (o_begin < 0) o_begin = std::max<int64_t>(0, LaneTiles<scalar_t>::weights(a));
    if (o_begin >= a.outer) return;
    a.q.data ? weights_impl<true>(a, o_begin) : weights_impl<false>(a, o_begin);
  }
};

} // namespace CPU_CAPABILITY
} // namespace iwae_fused::cpu

#include "short_rows.h"
#include "dense_rows.h"
#include "vimco_lanes.h"

namespace iwae_fused::cpu {
inline namespace CPU_CAPABILITY {

inline void reduce(const ReduceArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.dtype, "iwae_fused_reduce",
      [&] { Kernels<scalar_t>::reduce(a); });
}

inline void weights(const WeightsArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.dtype, "iwae_fused_weights",
      [&] { Kernels<scalar_t>::weights(a); });
}

inline bool recomputes_stats(const WeightsArgs& a) {
  bool r = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.dtype, "iwae_fused_recomputes_stats",
      [&] { r = DenseRows<scalar_t>::recomputes(a); });
  return r;
}

#define IWAE_STRINGIFY2(x) #x
#define IWAE_STRINGIFY(x) IWAE_STRINGIFY2(x)
inline constexpr KernelTable table{
    &reduce, &weights, &recomputes_stats, &vimco_forward, &vimco_backward,
    IWAE_STRINGIFY(CPU_CAPABILITY)};

} // namespace CPU_CAPABILITY
} // namespace iwae_fused::cpu
