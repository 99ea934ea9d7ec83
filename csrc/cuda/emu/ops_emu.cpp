// The emulated CUDA backend as a torch library, iwae_fused_emu: the same
// schemas as iwae_fused (schemas.h) and the same registration template as
// the real CUDA backend (device_ops.h), over the CUDA kernels compiled for
// the emulator. Its "device" is host memory: CPU tensors stand for device
// tensors, and iwae_fused/cuda_emulator.py routes iwae_fused's ops here.
//
// Each kernel call runs in a Session that registers the global memory the
// kernel-argument contract (kernel_args.h) allows: the extents of the
// operands as inputs, the outputs as write-first regions that every byte of
// must be written by the end of the call. Each op runs in an OpMemory scope
// (allocations.h), which knows the storages the op was given and made: every
// access must lie in one of those too.
//
// Planted faults (faults.h) break the kernel arguments here the way a bug in
// the planner would, for the tests that show the checks catch it.
#include <torch/library.h>

#include <c10/core/ScalarType.h>

#include <optional>
#include <type_traits>

#include "../../schemas.h"
#include "../device_ops.h"
#include "../kernel_api.h"
#include "allocations.h"
#include "faults.h"
#include "runtime.h"

namespace iwae_fused {
namespace {

int64_t elem(at::ScalarType t) {
  return static_cast<int64_t>(c10::elementSize(t));
}

int64_t opmath_elem(at::ScalarType t) {
  return elem(opmath_dtype(t));
}

// Elements spanned by an [outer, K, inner] walk with the given strides.
int64_t extent(int64_t outer, int64_t K, int64_t inner, int64_t so, int64_t sk, int64_t si) {
  if (outer * K * inner == 0) return 0;
  return 1 + (outer - 1) * so + (K - 1) * sk + (inner - 1) * si;
}

template <typename Args>
void inputs(iwae_emu::Session& s, const Args& a, at::ScalarType dt) {
  s.input("log_p", a.p.data, elem(dt) * extent(a.outer, a.K, a.inner, a.p.so, a.p.sk, a.p.si));
  if (a.q.data) {
    s.input("log_q", a.q.data, elem(dt) * extent(a.outer, a.K, a.inner, a.q.so, a.q.sk, a.q.si));
  }
}

// A backward's incoming gradient (one per output, strided) and its two
// full-size outputs; WeightsArgs and VimcoArgs share these fields.
template <typename Args>
void gradient_regions(iwae_emu::Session& s, const Args& a) {
  if (a.g) s.input("grad", a.g, elem(a.dtype) * extent(a.outer, 1, a.inner, a.g_so, 0, a.g_si));
  const int64_t e = elem(a.dtype);
  const int64_t out = e * extent(a.outer, a.K, a.inner, a.out_so, a.out_sk, a.out_si);
  if (a.out_p) s.output("grad_log_p", a.out_p, out, e);
  if (a.out_q) s.output("grad_log_q", a.out_q, out, e);
}

struct EmuKernels {
  static void reduce(const ReduceArgs& args) {
    const ReduceArgs a = iwae_emu::planted(args);
    iwae_emu::Session s;
    const int64_t n = a.outer * a.inner;
    const int64_t e = elem(a.dtype), oe = opmath_elem(a.dtype);
    inputs(s, a, a.dtype);
    if (a.out) s.output("out", a.out, n * e, e);
    if (a.stats) s.output("stats", a.stats, 2 * n * oe, oe);
    if (a.ess) s.output("ess", a.ess, n * e, e);
    if (a.max_w) s.output("max_w", a.max_w, n * e, e);
    cuda::CudaKernels::reduce(a);
    s.check_outputs_written();
  }
  static void weights(const WeightsArgs& args) {
    const WeightsArgs a = iwae_emu::planted(args);
    iwae_emu::Session s;
    const int64_t n = a.outer * a.inner;
    inputs(s, a, a.dtype);
    if (a.stats) s.input("stats", a.stats, 2 * n * opmath_elem(a.dtype));
    gradient_regions(s, a);
    cuda::CudaKernels::weights(a);
    s.check_outputs_written();
  }
  static bool recomputes_stats(const WeightsArgs& a) {
    return cuda::CudaKernels::recomputes_stats(iwae_emu::planted(a));
  }
  static c10::Allocator* output_allocator() { return nullptr; }
};

struct EmuVimco {
  static void vimco_forward(const VimcoArgs& args) {
    const VimcoArgs a = iwae_emu::planted(args);
    iwae_emu::Session s;
    const int64_t n = a.outer * a.inner;
    inputs(s, a, a.dtype);
    s.output("out", a.out, n * elem(a.dtype), elem(a.dtype));
    s.output("state", a.state, vimco_math::kStateSize * n * 8, 8);
    cuda::CudaVimco::vimco_forward(a);
    s.check_outputs_written();
  }
  static void vimco_backward(const VimcoArgs& args) {
    const VimcoArgs a = iwae_emu::planted(args);
    iwae_emu::Session s;
    const int64_t n = a.outer * a.inner;
    inputs(s, a, a.dtype);
    s.input("state", a.state, vimco_math::kStateSize * n * 8);
    gradient_regions(s, a);
    cuda::CudaVimco::vimco_backward(a);
    s.check_outputs_written();
  }
  static c10::Allocator* output_allocator() { return nullptr; }
};

// The storages of an op's tensor arguments, for its OpMemory scope.
inline void note(iwae_emu::OpMemory& m, const at::Tensor& t) {
  if (t.defined() && t.has_storage() && t.storage().data()) {
    m.note(t.storage().data(), static_cast<int64_t>(t.storage().nbytes()));
  }
}
inline void note(iwae_emu::OpMemory& m, const std::optional<at::Tensor>& t) {
  if (t.has_value()) note(m, *t);
}
template <typename T>
inline void note(iwae_emu::OpMemory&, const T&) {}

// An op of DeviceOps run in an OpMemory scope that knows its arguments' storages.
template <auto F>
struct Scoped;
template <typename R, typename... A, R (*F)(A...)>
struct Scoped<F> {
  static R call(A... args) {
    iwae_emu::OpMemory mem;
    (note(mem, args), ...);
    return F(std::forward<A>(args)...);
  }
};

struct EmuDevice {
  // As c10::cuda::CUDAGuard refuses a device of another type, so does this
  // one for anything but the emulated device's memory (the host's).
  struct Guard {
    explicit Guard(c10::Device d) {
      TORCH_CHECK(d.is_cpu(), "EmuGuard initialized with non-CPU DeviceType ", d.type());
    }
  };
  using Kernels = EmuKernels;
  using Vimco = EmuVimco;
  // device_ops.h registers each op through this.
  template <auto F>
  static constexpr auto wrap() {
    return &Scoped<F>::call;
  }
};

} // namespace
} // namespace iwae_fused

TORCH_LIBRARY(iwae_fused_emu, m) {
  iwae_fused::define_schemas(m);
}

// CompositeExplicitAutograd: reached whatever the tensors' device, so that a
// mix of devices reaches the ops' own device checks, as on CUDA.
TORCH_LIBRARY_IMPL(iwae_fused_emu, CompositeExplicitAutograd, m) {
  iwae_fused::register_device_ops<iwae_fused::EmuDevice>(m);
}
