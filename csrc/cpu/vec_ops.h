// Vector lanes for online_lse.h, and loads/stores that widen half types to
// float. Included by kernels_impl.h inside one instruction set's compilation
// (at::vec's inline CPU_CAPABILITY namespace keeps the sets apart).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/OpMathType.h>

#include <new>
#include <type_traits>

#include "../online_lse.h"

namespace iwae_fused {
inline namespace IWAE_ISA {

template <typename T>
struct LaneOps<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  // The max of a new value and the running max, ignoring a NaN new value
  // (online_lse.h: NaN travels through the sum). One instruction, where
  // at::vec::maximum spends three to propagate NaN.
  static V max(V x, V m) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) return _mm512_max_ps(x, m);
    if constexpr (std::is_same_v<T, double>) return _mm512_max_pd(x, m);
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, float>) return _mm256_max_ps(x, m);
    if constexpr (std::is_same_v<T, double>) return _mm256_max_pd(x, m);
#endif
    return V::blendv(m, x, x > m); // max_ps's rule: m unless x > m
  }
  C10_ALWAYS_INLINE static V exp(V x) {
    if constexpr (std::is_same_v<T, float>) {
#if defined(CPU_CAPABILITY_AVX512)
      return exp_avx512(x);
#else
      // exp_u20, the inline polynomial ATen's CPU flash attention uses for
      // the same online softmax, costs a fraction of the Sleef u10 call
      // (relative error <= 20 ulp, 2.4e-6). It saturates at +inf and loses
      // NaN; the blend restores exp(NaN) = NaN and exp(+inf) = +inf.
      return V::blendv(x, x.exp_u20(), x < V(T(INFINITY)));
#endif
    } else {
      return x.exp();
    }
  }

#if defined(CPU_CAPABILITY_AVX512)
  // exp for float lanes in 15 instructions, <= 1.01 ulp over the normal range
  // (checked against double exp on 1e7 points of [-110, 90]): Cody-Waite
  // reduction x = n ln2 + r with ln2 in two parts, Cephes' minimax
  // polynomial for e^r on [-ln2/2, ln2/2], and vscalefps for the 2^n, which
  // also gives the special values with no fix-up: the clamp keeps NaN
  // (max/min return their second operand then), -inf -> -104 -> 0 and
  // +inf -> 89 -> +inf. Cheaper and more accurate than exp_u20's ~20
  // instructions plus the fix-up blend, on the kernels' hottest line.
  C10_ALWAYS_INLINE static V exp_avx512(V v) {
    __m512 x = _mm512_max_ps(_mm512_set1_ps(-104.f), v);
    x = _mm512_min_ps(_mm512_set1_ps(89.f), x);
    const __m512 n = _mm512_roundscale_ps(
        _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    return _mm512_scalef_ps(_mm512_add_ps(p, _mm512_set1_ps(1.f)), n);
  }
#endif
  C10_ALWAYS_INLINE static V log(V x) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) return log_avx512(x);
#endif
    return x.log();
  }

#if defined(CPU_CAPABILITY_AVX512)
  // log for float lanes, inline (Sleef's u10 log is an out-of-line call, a
  // quarter of a short slice's forward at one log per three elements; NOTES.md
  // CPU 11). x = m 2^e exactly, from vgetmantps/vgetexpps (m in [1, 2), then
  // halved above sqrt(2) so that m lies in [sqrt(1/2), sqrt(2))); log(m) =
  // f - f^2/2 + f^3 P(f), f = m - 1, with Cephes' minimax P, and e ln2 added
  // in two parts. <= 0.83 ulp against double log over every positive float
  // (checked on 1.6e7 points: 2^-100..2^100, [1, 3], the top binade up to
  // FLT_MAX and denormals, which the kernels' DAZ reads as 0, giving -inf);
  // test_numerics.py's test_float32_logs_are_accurate_over_their_range pins
  // it through the op. Special values come from vgetexpps: +-0 -> -inf,
  // +inf -> +inf, NaN -> NaN; x < 0 -> NaN.
  C10_ALWAYS_INLINE static V log_avx512(V v) {
    const __m512 x = v;
    __m512 e = _mm512_getexp_ps(x);
    __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
    const __mmask16 big =
        _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356237f), _CMP_GT_OQ);
    m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
    e = _mm512_mask_add_ps(e, big, e, _mm512_set1_ps(1.f));
    const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.f));
    const __m512 z = _mm512_mul_ps(f, f);
    __m512 p = _mm512_set1_ps(7.0376836292e-2f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.1514610310e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.1676998740e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.2420140846e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.4249322787e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.6668057665e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.0000714765e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-2.4999993993e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(3.3333331174e-1f));
    __m512 y = _mm512_mul_ps(_mm512_mul_ps(p, f), z);
    y = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), y);
    y = _mm512_fnmadd_ps(z, _mm512_set1_ps(0.5f), y);
    __m512 r = _mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), _mm512_add_ps(f, y));
    // Anything but a positive finite number (class bits: NaN, +-0, +-inf,
    // negative, not denormal): vgetexpps's answer, NaN for x < 0.
    const __mmask16 special = _mm512_fpclass_ps_mask(x, 0xDF);
    if (special) {
      const __m512 g = _mm512_mask_blend_ps(
          _mm512_fpclass_ps_mask(x, 0x50), _mm512_getexp_ps(x),
          _mm512_set1_ps(NAN));
      r = _mm512_mask_blend_ps(special, r, g);
    }
    return r;
  }
#endif
  static V shift(V m) { return V::blendv(m, V(T(0)), m.abs() == V(T(INFINITY))); }
  static V log_norm(V s) { return log_norm_of(s, log(s)); }
  // log_norm from a log(s) already taken (the finish needs both).
  static V log_norm_of(V s, V log_s) {
    return V::blendv(log_s, V(T(INFINITY)), s == V(T(0)));
  }
  static V weight(V d, V log_norm) { return exp(d - log_norm); }
};

} // namespace IWAE_ISA

namespace cpu {
// In the instruction set's namespace too: VecIO<c10::Half>::load, say, has
// one mangled name for every set, and where a compiler keeps an out-of-line
// copy the linker would pick one set's body for all (an AVX-512 body, with
// its register ABI, called from the DEFAULT kernels). test_build.py checks
// the built library for such symbols.
inline namespace IWAE_ISA {

// N vectors of uninitialised storage. at::vec::Vectorized's default
// constructor zeroes, so a `V buf[16][16]` block buffer is a 16 KB memset on
// every call: as long as a short slice's whole reduction (NOTES.md CPU 11).
// The kernels write every element before they read it. Vectorized is
// trivially copyable and destructible, so its objects may live in raw bytes.
template <typename V, int64_t N>
struct UninitVecs {
  alignas(V) unsigned char raw[N * sizeof(V)];
  V* data() { return std::launder(reinterpret_cast<V*>(raw)); }
  V& operator[](int64_t i) { return data()[i]; }
};

// R rows of C vectors, uninitialised: buf[j][v].
template <typename V, int64_t R, int64_t C>
struct UninitTile {
  UninitVecs<V, R * C> v;
  V* operator[](int64_t j) { return v.data() + j * C; }
};

// Loads and stores of one opmath vector (L elements) from/to scalar_t memory.
template <typename scalar_t>
struct VecIO {
  using opmath_t = at::opmath_type<scalar_t>;
  using V = at::vec::Vectorized<opmath_t>;
  static constexpr int64_t L = V::size();
  static constexpr bool kWiden = !std::is_same_v<scalar_t, opmath_t>;
  // Whether store_out() can issue non-temporal stores (float and double
  // lanes of AVX-512 and AVX2).
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  static constexpr bool kCanStream = !kWiden;
#else
  static constexpr bool kCanStream = false;
#endif

  static V load(const scalar_t* ptr) {
    if constexpr (kWiden) {
      V out;
      at::vec::load_to_float(ptr, out);
      return out;
    } else {
      return V::loadu(ptr);
    }
  }
  // n < L elements; the other lanes read as 0.
  static V load(const scalar_t* ptr, int64_t n) {
    if constexpr (kWiden) {
      scalar_t tmp[L];
      for (int64_t j = 0; j < L; ++j) tmp[j] = j < n ? ptr[j] : scalar_t(0);
      return load(tmp);
    } else {
      return V::loadu(ptr, n);
    }
  }
  // Asks for the line kAheadBytes past ptr into L2 (prefetcht1), for loops
  // that stream an operand in memory order. While a core is busy with the
  // exponentials, the hardware prefetcher alone keeps too few lines in
  // flight, and a big call's time was the sum of its arithmetic and its
  // memory traffic rather than the larger of the two (NOTES.md CPU 35).
  // A prefetch past the end of an array is harmless: it never faults.
  static constexpr int64_t kAheadBytes = 2048;
  C10_ALWAYS_INLINE static void prefetch_ahead(const scalar_t* ptr) {
    prefetch_line(reinterpret_cast<uintptr_t>(ptr) + kAheadBytes);
  }
  // Asks for the line `ahead` elements past ptr into L2.
  C10_ALWAYS_INLINE static void prefetch_l2(const scalar_t* ptr, int64_t ahead) {
    prefetch_line(reinterpret_cast<uintptr_t>(ptr) + ahead * int64_t(sizeof(scalar_t)));
  }
  // Every prefetch above goes through here. The address is an integer: it
  // may lie past the operand (the rows after the last, the tile after the
  // last), where a prefetch is a request for nothing and never faults but
  // forming the pointer would be undefined behaviour.
  C10_ALWAYS_INLINE static void prefetch_line(uintptr_t at) {
    __builtin_prefetch(reinterpret_cast<const void*>(at), 0, 2);
  }
  // store(), but with a non-temporal store where `stream` (stream_stores.h)
  // and ptr holds a whole vector aligned to its size: float and double
  // lanes on AVX-512 and AVX2; half types and partial or unaligned vectors
  // take the ordinary store.
  C10_ALWAYS_INLINE static void store_out(scalar_t* ptr, V v, int64_t n, bool stream) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    if constexpr (kCanStream) {
      constexpr uintptr_t kAlign = sizeof(V) - 1;
      if (stream && n == L && (reinterpret_cast<uintptr_t>(ptr) & kAlign) == 0) {
#if defined(CPU_CAPABILITY_AVX512)
        if constexpr (std::is_same_v<scalar_t, float>) _mm512_stream_ps(ptr, v);
        else _mm512_stream_pd(ptr, v);
#else
        if constexpr (std::is_same_v<scalar_t, float>) _mm256_stream_ps(ptr, v);
        else _mm256_stream_pd(ptr, v);
#endif
        return;
      }
    }
#endif
    store(ptr, v, n);
  }
  static void store(scalar_t* ptr, V v, int64_t n = L) {
    if constexpr (kWiden) {
      at::vec::convert_from_float<scalar_t>(v, v).store(ptr, n);
    } else {
      v.store(ptr, n);
    }
  }
};

} // namespace IWAE_ISA
} // namespace cpu
} // namespace iwae_fused
