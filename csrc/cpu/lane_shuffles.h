// Moving values between the lanes of a vector in registers: a permutation of
// one vector's lanes, and the transpose of an L x L tile of vectors. The
// short-slice kernels (short_rows.h) use them where a gather would fetch
// every lane from memory on its own: AVX-512 gathers cost about as much as
// the exponential they feed on the CPUs we measured (benchmarks/NOTES.md
// CPU 16), a permute or a shuffle about one cycle.
// Included by kernels_impl.h inside one instruction set's compilation.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace iwae_fused::cpu {
inline namespace IWAE_ISA {

template <typename V>
struct LaneShuffles {
  using T = typename V::value_type;
  using idx_t = at::vec::int_same_size_t<T>;
  using VI = at::vec::Vectorized<idx_t>;
  static constexpr int64_t L = V::size();

  // out[l] = v[idx[l]], every idx[l] in [0, L).
  static V permute(const V& v, const VI& idx) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) return _mm512_permutexvar_ps(idx, v);
    if constexpr (std::is_same_v<T, double>) return _mm512_permutexvar_pd(idx, v);
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, float>) return _mm256_permutevar8x32_ps(v, idx);
#endif
    T in[L], out[L];
    idx_t ix[L];
    v.store(in);
    idx.store(ix);
    for (int64_t l = 0; l < L; ++l) out[l] = in[ix[l]];
    return V::loadu(out);
  }

  // Whether transpose() is a register shuffle network here; elsewhere the
  // kernels keep their gathers.
#if defined(CPU_CAPABILITY_AVX512)
  static constexpr bool kFastTranspose = std::is_same_v<T, float>;
#else
  static constexpr bool kFastTranspose = false;
#endif

  // v[0..K): L rows of K samples stored row after row (sample fastest), K a
  // power of two below L; out: lane l of v[k] is sample k of row l. log2(K)
  // levels of deinterleave2 (two permutes per pair of vectors): 2 for K = 2,
  // 8 for K = 4, where transpose() spends 64 whatever K.
  template <int K>
  static void split_samples(V* v) {
    if constexpr (K > 1) {
      V ev[K / 2], od[K / 2];
      for (int i = 0; i < K / 2; ++i) {
        auto [e, o] = at::vec::deinterleave2(v[2 * i], v[2 * i + 1]);
        ev[i] = e;
        od[i] = o;
      }
      // The even samples of L rows, and the odd ones, each row after row.
      split_samples<K / 2>(ev);
      split_samples<K / 2>(od);
      for (int j = 0; j < K / 2; ++j) {
        v[2 * j] = ev[j];
        v[2 * j + 1] = od[j];
      }
    }
  }

#if defined(CPU_CAPABILITY_AVX512)
  // Where each lane of split_rows<K>'s outputs comes from: output k's lane
  // l is element l K + k of the K source vectors, i.e. lane (l K + k) % 32
  // of source pair (l K + k) / 32. Built at compile time, so the indices
  // are constants and the masks immediates.
  template <int K>
  struct RowSplit {
    static constexpr int kPairs = (K + 1) / 2;
    int32_t idx[K][16] = {};
    uint16_t mask[K][kPairs] = {}; // lanes of output k taken from pair j
    constexpr RowSplit() {
      for (int k = 0; k < K; ++k) {
        for (int l = 0; l < 16; ++l) {
          const int e = l * K + k;
          idx[k][l] = e % 32;
          mask[k][e / 32] |= static_cast<uint16_t>(1u << l);
        }
      }
    }
  };
#endif

  // Whether split_rows<K> is a register permute network here.
#if defined(CPU_CAPABILITY_AVX512)
  static constexpr bool kFastSplitRows = std::is_same_v<T, float>;
#else
  static constexpr bool kFastSplitRows = false;
#endif

  // v[0..K): 16 rows of K samples stored row after row, K in 3..7 (the
  // K that do not divide L, where split_samples cannot work in halves);
  // out: lane l of v[k] is sample k of row l. Per output one vpermt2ps per
  // pair of source vectors (an index's low 5 bits pick a lane of the
  // pair), the pairs merged under masks, and a vpermps for an odd last
  // vector: 6 permutes in all for K = 3, 42 for K = 7, where transpose()
  // spends 64 shuffles and 16 masked loads. K is a template argument so
  // that every vector stays in a register (with K at run time the
  // outputs lived in memory and the permutes waited on each other's
  // stores; NOTES.md CPU 22).
  template <int K>
  static void split_rows(V* v) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float> && K > 2 && K < 8) {
      static constexpr RowSplit<K> map{};
      __m512 in[K], out[K];
      for (int i = 0; i < K; ++i) in[i] = v[i];
      for (int k = 0; k < K; ++k) {
        const __m512i idx = _mm512_loadu_si512(map.idx[k]);
        __m512 o = _mm512_permutex2var_ps(in[0], idx, in[1]);
        for (int j = 1; j < RowSplit<K>::kPairs; ++j) {
          const __mmask16 m = map.mask[k][j];
          if (2 * j + 1 < K) {
            o = _mm512_mask_mov_ps(
                o, m, _mm512_permutex2var_ps(in[2 * j], idx, in[2 * j + 1]));
          } else { // the odd last vector: an index below 16 picks its lane
            o = _mm512_mask_permutexvar_ps(o, m, idx, in[2 * j]);
          }
        }
        out[k] = o;
      }
      for (int k = 0; k < K; ++k) v[k] = out[k];
      return;
    }
#endif
    static_assert(K > 0 && K < L, "split_rows: K below L");
    T buf[K * L];
    for (int i = 0; i < K; ++i) v[i].store(buf + i * L);
    for (int k = 0; k < K; ++k) {
      T col[L];
      for (int64_t l = 0; l < L; ++l) col[l] = buf[l * K + k];
      v[k] = V::loadu(col);
    }
  }

  // The split of L rows of K samples for any K from 2 to L / 2 (AVX-512
  // float lanes: 2 to 8): in halves where K divides L, else by permutes.
  template <int K>
  static void split(V* v) {
    if constexpr (L % K == 0) {
      split_samples<K>(v);
    } else {
      split_rows<K>(v);
    }
  }

  // The inverse of split_samples: lane l of v[k] (sample k of row l) back
  // to L rows of K samples stored row after row in v[0..K).
  template <int K>
  static void merge_samples(V* v) {
    if constexpr (K > 1) {
      V ev[K / 2], od[K / 2];
      for (int j = 0; j < K / 2; ++j) {
        ev[j] = v[2 * j];
        od[j] = v[2 * j + 1];
      }
      merge_samples<K / 2>(ev); // the even samples, row after row
      merge_samples<K / 2>(od);
      for (int i = 0; i < K / 2; ++i) {
        auto [lo, hi] = at::vec::interleave2(ev[i], od[i]);
        v[2 * i] = lo;
        v[2 * i + 1] = hi;
      }
    }
  }

  // r[j] lane l <-> r[l] lane j, for the L x L tile r[0..L): rows in,
  // columns out. 64 shuffles for 256 floats (the unpack / shuffle /
  // 128-bit-lane network of FBGEMM and ATen's transpose_mxn).
  static void transpose(V* r) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) {
      __m512 t[16];
      for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
      }
      // In every 128-bit lane j, u[4g + c] holds rows 4g .. 4g + 3 of
      // column 4j + c.
      __m512 u[16];
      for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
      }
      // Column 4j + c takes 128-bit lane j of u[c], u[4 + c], u[8 + c],
      // u[12 + c]: a 4 x 4 transpose of 128-bit blocks.
      for (int c = 0; c < 4; ++c) {
        const __m512 t0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
        const __m512 t1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
        const __m512 t2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        const __m512 t3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
        r[c] = _mm512_shuffle_f32x4(t0, t2, 0x88);
        r[4 + c] = _mm512_shuffle_f32x4(t1, t3, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(t0, t2, 0xDD);
        r[12 + c] = _mm512_shuffle_f32x4(t1, t3, 0xDD);
      }
      return;
    }
#endif
    T buf[L][L];
    for (int64_t j = 0; j < L; ++j) r[j].store(buf[j]);
    for (int64_t j = 0; j < L; ++j) {
      T col[L];
      for (int64_t l = 0; l < L; ++l) col[l] = buf[l][j];
      r[j] = V::loadu(col);
    }
  }
};

} // namespace IWAE_ISA
} // namespace iwae_fused::cpu
