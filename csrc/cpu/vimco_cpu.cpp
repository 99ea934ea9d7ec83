// VIMCO on CPU: one loop over K per example (any strides), examples in
// parallel. The per-example math is vimco_math.h, shared with CUDA; K is
// small for the discrete-latent models VIMCO serves, so these loops are
// scalar and do their arithmetic in double.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../vimco_glue.h"

namespace iwae_fused {
namespace {

constexpr int64_t kGrainElems = 32768;

template <typename scalar_t>
double log_w(const VimcoArgs& a, int64_t o, int64_t k, int64_t i) {
  const auto* p = static_cast<const scalar_t*>(a.p.data);
  const auto* q = static_cast<const scalar_t*>(a.q.data);
  return static_cast<double>(p[o * a.p.so + k * a.p.sk + i * a.p.si]) -
      static_cast<double>(q[o * a.q.so + k * a.q.sk + i * a.q.si]);
}

struct CpuVimco {
  static void vimco_forward(const VimcoArgs& a) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "vimco_cpu", [&] {
      const int64_t n = a.outer * a.inner;
      auto* out = static_cast<scalar_t*>(a.out);
      at::parallel_for(0, n, std::max<int64_t>(1, kGrainElems / a.K), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t o = r / a.inner, i = r % a.inner;
          vimco_math::State st;
          for (int64_t k = 0; k < a.K; ++k) vimco_math::absorb(st, log_w<scalar_t>(a, o, k, i), k);
          vimco_math::store(st, a.state, n, r);
          out[r] = static_cast<scalar_t>(vimco_math::bound(st, a.K));
        }
      });
    });
  }

  static void vimco_backward(const VimcoArgs& a) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "vimco_cpu_bwd", [&] {
      const int64_t n = a.outer * a.inner;
      const auto* g = static_cast<const scalar_t*>(a.g);
      auto* op = static_cast<scalar_t*>(a.out_p);
      auto* oq = static_cast<scalar_t*>(a.out_q);
      at::parallel_for(0, n, std::max<int64_t>(1, kGrainElems / a.K), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t o = r / a.inner, i = r % a.inner;
          const vimco_math::State st = vimco_math::load(a.state, n, r);
          const double gr = static_cast<double>(g[o * a.g_so + i * a.g_si]);
          for (int64_t k = 0; k < a.K; ++k) {
            double w, sig;
            vimco_math::signal(st, a.K, log_w<scalar_t>(a, o, k, i), k, w, sig);
            const int64_t off = o * a.out_so + k * a.out_sk + i * a.out_si;
            if (op) op[off] = static_cast<scalar_t>(gr * w);
            if (oq) oq[off] = static_cast<scalar_t>(gr * (sig - w));
          }
        }
      });
    });
  }
};

} // namespace

TORCH_LIBRARY_IMPL(iwae_fused, CPU, m) {
  m.impl("vimco", &vimco<CpuVimco>);
  m.impl("_vimco_forward", &vimco_forward<CpuVimco>);
  m.impl("vimco_backward", &vimco_backward<CpuVimco>);
}

} // namespace iwae_fused
