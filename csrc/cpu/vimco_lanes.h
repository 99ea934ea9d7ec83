// VIMCO on CPU in vector lanes: L consecutive examples per vector of doubles
// (benchmarks/NOTES.md CPU 14). Included by kernels_impl.h inside one
// instruction set's namespace.
//
// The math is vimco_math.h's (read its comment for the state and the
// leave-one-out signal), which the CUDA kernels run one example per thread.
// On the CPU that form is a scalar loop calling libm's exp and log per
// sample; here the same state transitions are taken with selects instead of
// branches, so that the exponentials and logarithms are Sleef vectors over L
// examples. The saved state has vimco_math's layout ([kStateSize, examples],
// doubles), so forward and backward stay interchangeable with the scalar
// definitions, and tests/test_vimco.py checks both backends against the
// reference. Loads and stores are scalar (any strides; a lane per example),
// which costs little next to the transcendental functions.
#pragma once

namespace iwae_fused::cpu {
inline namespace CPU_CAPABILITY {

template <typename scalar_t>
struct VimcoLanes {
  using V = at::vec::Vectorized<double>;
  static constexpr int64_t L = V::size();

  // Element offsets of the lanes' examples r0 .. r0 + n: (o, i) -> o * so +
  // i * si for each operand; lanes past n repeat the last example.
  struct Lanes {
    int64_t n, p[L], q[L], g[L], out[L], r0;
  };

  static Lanes lanes(const VimcoArgs& a, int64_t r0, int64_t n_ex) {
    Lanes ln;
    ln.r0 = r0;
    ln.n = std::min<int64_t>(L, n_ex - r0);
    for (int64_t l = 0; l < L; ++l) {
      const int64_t r = r0 + std::min(l, ln.n - 1);
      const int64_t o = r / a.inner, i = r - o * a.inner;
      ln.p[l] = o * a.p.so + i * a.p.si;
      ln.q[l] = o * a.q.so + i * a.q.si;
      ln.g[l] = o * a.g_so + i * a.g_si;
      ln.out[l] = o * a.out_so + i * a.out_si;
    }
    return ln;
  }

  // log_w = log_p - log_q of sample k, in double, one example per lane.
  static V log_w(const VimcoArgs& a, const Lanes& ln, int64_t k) {
    const auto* p = static_cast<const scalar_t*>(a.p.data) + k * a.p.sk;
    const auto* q = static_cast<const scalar_t*>(a.q.data) + k * a.q.sk;
    alignas(64) double x[L];
    for (int64_t l = 0; l < L; ++l) {
      x[l] = static_cast<double>(p[ln.p[l]]) - static_cast<double>(q[ln.q[l]]);
    }
    return V::loadu(x);
  }

  static V ones_where(const V& mask) { return mask & V(1.0); }

  static void forward(const VimcoArgs& a) {
    const int64_t n_ex = a.outer * a.inner;
    const V ninf(-INFINITY), pinf(INFINITY);
    const V log_k(std::log(static_cast<double>(a.K)));
    parallel_for(
        0, ceil_div(n_ex, L), std::max<int64_t>(1, kParallelElems / (a.K * L)),
        [&](int64_t b, int64_t e) {
          for (int64_t grp = b; grp < e; ++grp) {
            const Lanes ln = lanes(a, grp * L, n_ex);
            // vimco_math::absorb for every lane: a new first argmax sends the
            // old max to the others, any other value goes there itself; the
            // others' (max, sum) pair takes it with one exp (exp(om - y) for
            // a new max of theirs, exp(y - om) otherwise); -inf only counts,
            // NaN poisons the max.
            V m(ninf), argmax(-1.0), om(ninf), os(0.0), fsum(0.0), n_ninf(0.0), nan(0.0);
            for (int64_t k = 0; k < a.K; ++k) {
              const V x = log_w(a, ln, k);
              nan = nan | (x != x);
              const V is_ninf = x == ninf;
              n_ninf = n_ninf + ones_where(is_ninf);
              fsum = fsum + V::blendv(x, V(0.0), is_ninf);
              const V gt = x > m; // false for NaN and for a -inf x
              // What joins the others: -inf (nothing) for a -inf x and for
              // the first finite sample, whose "old max" is the empty -inf.
              const V y = V::blendv(x, m, gt);
              const V up = y > om; // false for y = -inf
              const V t = (V::blendv(y - om, om - y, up)).exp();
              const V joined = V::blendv(os + t, os * t + V(1.0), up);
              os = V::blendv(joined, os, y == ninf);
              om = V::blendv(om, y, up);
              m = V::blendv(m, x, gt);
              argmax = V::blendv(argmax, V(static_cast<double>(k)), gt);
            }
            m = V::blendv(m, V(NAN), nan);
            // vimco_math::log_others and ::bound.
            const V lo = V::blendv((om - m) + os.log(), ninf, om == ninf);
            V bound = m + (lo.exp().log1p() - log_k);
            bound = V::blendv(bound, m, (m == ninf) | (m == pinf));
            const int64_t n = ln.n, r0 = ln.r0;
            double* st = a.state;
            m.store(st + r0, n);
            lo.store(st + n_ex + r0, n);
            argmax.store(st + 2 * n_ex + r0, n);
            fsum.store(st + 3 * n_ex + r0, n);
            n_ninf.store(st + 4 * n_ex + r0, n);
            alignas(64) double out[L];
            bound.store(out);
            auto* o = static_cast<scalar_t*>(a.out) + r0;
            for (int64_t l = 0; l < n; ++l) o[l] = static_cast<scalar_t>(out[l]);
          }
        });
  }

  static void backward(const VimcoArgs& a) {
    const int64_t n_ex = a.outer * a.inner;
    const V ninf(-INFINITY), pinf(INFINITY), zero(0.0), one(1.0);
    const V km1(static_cast<double>(a.K - 1));
    auto* op = static_cast<scalar_t*>(a.out_p);
    auto* oq = static_cast<scalar_t*>(a.out_q);
    const auto* gp = static_cast<const scalar_t*>(a.g);
    parallel_for(
        0, ceil_div(n_ex, L), std::max<int64_t>(1, kParallelElems / (a.K * L)),
        [&](int64_t b, int64_t e) {
          alignas(64) double gl[L], wp[L], wq[L], lo_l[L], lf_l[L], sm_l[L];
          for (int64_t grp = b; grp < e; ++grp) {
            const Lanes ln = lanes(a, grp * L, n_ex);
            const double* st = a.state + ln.r0;
            const int64_t n = ln.n;
            const V m = V::loadu(st, n), lo = V::loadu(st + n_ex, n);
            const V argmax = V::loadu(st + 2 * n_ex, n);
            const V fsum = V::loadu(st + 3 * n_ex, n);
            const V n_ninf = V::loadu(st + 4 * n_ex, n);
            for (int64_t l = 0; l < L; ++l) gl[l] = static_cast<double>(gp[ln.g[l]]);
            const V g = V::loadu(gl);
            const V S = one + lo.exp();
            const V empty = m == ninf, bad_m = (m != m) | (m == pinf);
            // The argmax's signal, once per example: vimco_math's scalar
            // argmax_signal per lane (log-space functions Sleef lacks, at a
            // cost of L calls per K * L samples).
            const V lf_max = V::blendv((fsum - m) / km1 - m, ninf, n_ninf != zero);
            lo.store(lo_l);
            lf_max.store(lf_l);
            for (int64_t l = 0; l < L; ++l) {
              sm_l[l] = vimco_math::argmax_signal(lo_l[l], lf_l[l]);
            }
            const V sig_max = V::loadu(sm_l);
            // vimco_math::signal for every lane and sample k.
            for (int64_t k = 0; k < a.K; ++k) {
              const V x = log_w(a, ln, k);
              const V is_ninf = x == ninf;
              const V ew = V::blendv((x - m).exp(), zero, is_ninf);
              V w = ew / S;
              const V others_ninf = n_ninf - ones_where(is_ninf);
              const V mean = (fsum - V::blendv(x, zero, is_ninf)) / km1;
              const V f = V::blendv(zero, (mean - m).exp(), others_ninf == zero);
              V sig = V::blendv(
                  zero - ((f - ew) / S).log1p(), sig_max,
                  argmax == V(static_cast<double>(k)));
              sig = V::blendv(sig, zero, empty);
              w = V::blendv(w, zero, empty);
              const V bad = bad_m | (x != x);
              sig = V::blendv(sig, V(NAN), bad);
              w = V::blendv(w, V(NAN), bad);
              (g * w).store(wp);
              (g * (sig - w)).store(wq);
              const int64_t ko = k * a.out_sk;
              for (int64_t l = 0; l < n; ++l) {
                if (op) op[ln.out[l] + ko] = static_cast<scalar_t>(wp[l]);
                if (oq) oq[ln.out[l] + ko] = static_cast<scalar_t>(wq[l]);
              }
            }
          }
        });
  }
};

inline void vimco_forward(const VimcoArgs& a) {
  if (a.outer * a.inner == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.dtype, "iwae_fused_vimco",
      [&] { VimcoLanes<scalar_t>::forward(a); });
}

inline void vimco_backward(const VimcoArgs& a) {
  if (a.outer * a.inner == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.dtype, "iwae_fused_vimco_backward",
      [&] { VimcoLanes<scalar_t>::backward(a); });
}

} // namespace CPU_CAPABILITY
} // namespace iwae_fused::cpu
