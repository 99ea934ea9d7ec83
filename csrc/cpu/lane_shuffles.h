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

  // Whether permute() is one instruction here (elsewhere a scalar loop).
#if defined(CPU_CAPABILITY_AVX512)
  static constexpr bool kFastPermute = true;
#elif defined(CPU_CAPABILITY_AVX2)
  static constexpr bool kFastPermute = std::is_same_v<T, float>;
#else
  static constexpr bool kFastPermute = false;
#endif

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

  // Where each lane of a split's outputs comes from, for 16 outputs of
  // slabs [K, inner] stored slab after slab (inner dividing 16; rows:
  // inner = 1): output k's lane l is element e = (l / inner) K inner +
  // k inner + l % inner of the K source vectors, i.e. lane e % 32 of
  // source pair e / 32. constexpr, so that split_rows' indices are
  // constants and its masks immediates; split_by takes one built at run
  // time for the slabs.
  template <int K>
  struct SampleSplit {
    static constexpr int kPairs = (K + 1) / 2;
    int32_t idx[K][16] = {};
    uint16_t mask[K][kPairs] = {}; // lanes of output k taken from pair j
    constexpr SampleSplit() = default; // no lanes mapped: to be assigned
    constexpr explicit SampleSplit(int64_t inner) {
      for (int k = 0; k < K; ++k) {
        for (int l = 0; l < 16; ++l) {
          const int64_t e = (l / inner) * K * inner + k * inner + l % inner;
          idx[k][l] = static_cast<int32_t>(e % 32);
          mask[k][e / 32] |= static_cast<uint16_t>(1u << l);
        }
      }
    }
  };

  // Whether split_rows<K> and split_by<K> are register permute networks
  // here (elsewhere they are scalar loops, which no kernel calls).
#if defined(CPU_CAPABILITY_AVX512)
  static constexpr bool kFastSplitRows = std::is_same_v<T, float>;
#else
  static constexpr bool kFastSplitRows = false;
#endif

  // v[0..K): 16 outputs' K samples as `map` lays them out; out: lane l of
  // v[k] is sample k of output l. Per output one vpermt2ps per pair of
  // source vectors (an index's low 5 bits pick a lane of the pair), the
  // pairs merged under masks, and a vpermps for an odd last vector: 6
  // permutes in all for K = 3, 42 for K = 7, where transpose() spends 64
  // shuffles and 16 masked loads. K is a template argument so that every
  // vector stays in a register (with K at run time the outputs lived in
  // memory and the permutes waited on each other's stores; NOTES.md
  // CPU 22).
  template <int K>
  C10_ALWAYS_INLINE static void split_by(V* v, const SampleSplit<K>& map) {
    static_assert(K > 1 && K <= 8 && L == 16, "split_by: 16 lanes, K of 2 to 8");
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) {
      __m512 in[K], out[K];
      for (int i = 0; i < K; ++i) in[i] = v[i];
      for (int k = 0; k < K; ++k) {
        const __m512i idx = _mm512_loadu_si512(map.idx[k]);
        __m512 o = _mm512_permutex2var_ps(in[0], idx, in[1]);
        for (int j = 1; j < SampleSplit<K>::kPairs; ++j) {
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
    T buf[K * L];
    for (int i = 0; i < K; ++i) v[i].store(buf + i * L);
    for (int k = 0; k < K; ++k) {
      T col[L];
      for (int l = 0; l < L; ++l) {
        int j = 0;
        while (!(map.mask[k][j] >> l & 1)) ++j;
        col[l] = buf[32 * j + map.idx[k][l]];
      }
      v[k] = V::loadu(col);
    }
  }

  // split_by for 16 rows of K samples stored row after row (K of 3, 5, 6,
  // 7, which do not divide L: split_samples cannot work in halves), from
  // a map made at compile time.
  template <int K>
  static void split_rows(V* v) {
    static constexpr SampleSplit<K> map{1};
    split_by<K>(v, map);
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
