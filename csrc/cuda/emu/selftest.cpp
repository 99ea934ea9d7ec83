// Kernels that break one rule each, beside their correct twins: the tests of
// the emulator's own checks (tests/test_cuda_emulator_checks.py). Each broken
// one must fail with its check's message; each twin must run clean, so a
// check that fires on everything cannot pass either.
#include "selftest.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <functional>
#include <map>

#include "../device_api.h"
#include "runtime.h"

namespace iwae_emu::selftest {
namespace {

constexpr int kN = 64;  // elements per buffer

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Lanes exchange values; broken: only the lower half of the warp calls the
// shuffle whose mask names all 32 lanes.
template <bool BROKEN>
__global__ void shuffle_kernel(const float* in, float* out) {
  const int lane = threadIdx.x % 32;
  float v = ld_global(in + threadIdx.x);
  if (!BROKEN || lane < 16) v += __shfl_xor_sync(0xffffffffu, v, 1);
  st_global(out + threadIdx.x, v);
}

// Broken: a barrier inside a branch that depends on the thread.
template <bool BROKEN>
__global__ void barrier_kernel(const float* in, float* out) {
  st_global(out + threadIdx.x, ld_global(in + threadIdx.x));
  if (!BROKEN || threadIdx.x < 32) __syncthreads();
}

// Broken: reads the previous thread's shared slot with no barrier after the
// writes.
template <bool BROKEN>
__global__ void race_kernel(const float* in, float* out) {
  IWAE_SHARED(float, buf, kN);
  st_shared(buf + threadIdx.x, ld_global(in + threadIdx.x));
  if (!BROKEN) __syncthreads();
  st_global(out + threadIdx.x, ld_shared(buf + (threadIdx.x == 0 ? 0 : threadIdx.x - 1)));
}

// A sum of n elements, one thread; broken: the loop runs to i <= n.
template <bool BROKEN>
__global__ void tail_kernel(const float* in, float* out, int n) {
  float s = 0;
  for (int i = 0; BROKEN ? i <= n : i < n; ++i) s += ld_global(in + i);
  st_global(out, s);
}

// 16-byte loads of 4 floats; broken: starts one float into the buffer.
template <bool BROKEN>
__global__ void vector_kernel(const float* in, float* out) {
  const int off = BROKEN ? 1 : 0;
  const auto v = ld_global(reinterpret_cast<const Pack<float, 4>*>(in + off + 4 * threadIdx.x));
  st_global(out + threadIdx.x, v.v[0] + v.v[1] + v.v[2] + v.v[3]);
}

// Broken: reads a shared slot that no thread wrote.
template <bool BROKEN>
__global__ void uninit_shared_kernel(float* out) {
  IWAE_SHARED(float, buf, kN);
  if (!BROKEN || threadIdx.x > 0) st_shared(buf + threadIdx.x, 1.0f);
  __syncthreads();
  st_global(out + threadIdx.x, ld_shared(buf + (threadIdx.x + 1) % kN));
}

// Broken: leaves the last output element unwritten.
template <bool BROKEN>
__global__ void unwritten_kernel(float* out) {
  if (!BROKEN || threadIdx.x + 1 < blockDim.x) st_global(out + threadIdx.x, 1.0f);
}

// Broken: 64 KB of static shared memory, over the 48 KB limit.
template <bool BROKEN>
__global__ void big_shared_kernel(float* out) {
  IWAE_SHARED(float, buf, BROKEN ? 16384 : 1024);
  st_shared(buf + threadIdx.x, 1.0f);
  __syncthreads();
  st_global(out + threadIdx.x, ld_shared(buf + threadIdx.x));
}

// Runs `launch` in a session with an input of kN + 4 floats and an output
// of kN floats; returns the output.
at::Tensor run(const std::function<void(const float*, float*)>& launch, int64_t outputs = kN) {
  at::Tensor in = at::arange(kN + 4, at::kFloat);
  at::Tensor out = at::empty({outputs}, at::kFloat);
  Session s;
  s.input("in", in.data_ptr(), kN * 4);  // the last 4 floats lie outside the input
  s.output("out", out.data_ptr(), outputs * 4);
  launch(in.data_ptr<float>(), out.data_ptr<float>());
  s.check_outputs_written();
  return out;
}

using iwae_fused::cuda::dev::launch;

template <bool B>
at::Tensor case_for(const std::string& name) {
  if (name == "divergent_shuffle") {
    return run([](const float* i, float* o) { launch<shuffle_kernel<B>>(dim3(1), dim3(kN), i, o); });
  }
  if (name == "divergent_barrier") {
    return run([](const float* i, float* o) { launch<barrier_kernel<B>>(dim3(1), dim3(kN), i, o); });
  }
  if (name == "shared_race") {
    return run([](const float* i, float* o) { launch<race_kernel<B>>(dim3(1), dim3(kN), i, o); });
  }
  if (name == "tail_read") {
    return run([](const float* i, float* o) { launch<tail_kernel<B>>(dim3(1), dim3(1), i, o, kN); }, 1);
  }
  if (name == "misaligned_vector_load") {
    return run([](const float* i, float* o) { launch<vector_kernel<B>>(dim3(1), dim3(kN / 4), i, o); },
               kN / 4);
  }
  if (name == "uninitialised_shared") {
    return run([](const float*, float* o) { launch<uninit_shared_kernel<B>>(dim3(1), dim3(kN), o); });
  }
  if (name == "unwritten_output") {
    return run([](const float*, float* o) { launch<unwritten_kernel<B>>(dim3(1), dim3(kN), o); });
  }
  if (name == "shared_over_limit") {
    return run([](const float*, float* o) { launch<big_shared_kernel<B>>(dim3(1), dim3(kN), o); });
  }
  if (name == "grid_y_over_limit") {
    return run([](const float*, float* o) {
      launch<unwritten_kernel<false>>(dim3(1, B ? 70000 : 1), dim3(kN), o);
    });
  }
  if (name == "block_over_limit") {
    return run([](const float*, float* o) {
      launch<unwritten_kernel<false>>(dim3(1), dim3(B ? 1025 : kN), o);
    }, B ? 1025 : kN);
  }
  if (name == "zero_grid") {
    return run([](const float*, float* o) { launch<unwritten_kernel<false>>(dim3(B ? 0 : 1), dim3(kN), o); });
  }
  TORCH_CHECK(false, "CUDA emulator self-test: no case named '", name, "'");
}

}  // namespace

std::vector<std::string> cases() {
  return {"divergent_shuffle", "divergent_barrier", "shared_race", "tail_read",
          "misaligned_vector_load", "uninitialised_shared", "unwritten_output",
          "shared_over_limit", "grid_y_over_limit", "block_over_limit", "zero_grid"};
}

at::Tensor run_case(const std::string& name, bool broken) {
  return broken ? case_for<true>(name) : case_for<false>(name);
}

}  // namespace iwae_emu::selftest
