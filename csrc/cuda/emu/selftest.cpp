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
#include "allocations.h"
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

// Two blocks of kN / 2 threads; broken: both write the first half of out.
template <bool BROKEN>
__global__ void two_blocks_write_kernel(const float* in, float* out) {
  const int i = (BROKEN ? 0 : blockIdx.x * blockDim.x) + threadIdx.x;
  st_global(out + i, ld_global(in + i));
}

// Each block copies its half of in to out; broken: block 1 then also reads
// an element block 0 wrote (no order between blocks).
template <bool BROKEN>
__global__ void cross_block_read_kernel(const float* in, float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  st_global(out + i, ld_global(in + i));
  const int j = BROKEN && blockIdx.x == 1 ? threadIdx.x : i;
  st_global(out + i, ld_global(out + j) + 1.0f);
}

// Every thread writes its element, then its neighbour's; correct twin: a
// __syncthreads between the two writes orders them, as CUDA guarantees.
template <bool BROKEN>
__global__ void block_write_order_kernel(const float* in, float* out) {
  st_global(out + threadIdx.x, ld_global(in + threadIdx.x));
  if (!BROKEN) __syncthreads();
  st_global(out + (threadIdx.x + 1) % blockDim.x, 2.0f);
}

// Reads in at an offset; broken: past the end of in's storage, though within
// the (too wide) extent its "kernel arguments" declare, as a planner stride
// bug would.
template <bool BROKEN>
__global__ void storage_bounds_kernel(const float* in, float* out) {
  st_global(out + threadIdx.x, ld_global(in + threadIdx.x + (BROKEN ? kN : 0)));
}

// Runs `launch` in an op's scope and session with an input of kN + 4 floats
// (in_elems of which are declared as the kernel's input) and an output of
// `outputs` floats; returns the output.
at::Tensor run(const std::function<void(const float*, float*)>& launch, int64_t outputs = kN,
               int64_t in_elems = kN) {
  OpMemory mem;  // in and out are allocated in it, so they are the op's storages
  at::Tensor in = at::arange(kN + 4, at::kFloat);
  // out starts 2 kN floats into its buffer, so it never lies within the
  // extent declared for in (at most 2 kN floats from in's start), wherever
  // the allocator puts the two: a correct twin's store to out was once taken
  // for an access past in's storage when out happened to follow in.
  at::Tensor out = at::empty({outputs + 2 * kN}, at::kFloat).narrow(0, 2 * kN, outputs);
  Session s;
  s.input("in", in.data_ptr(), in_elems * 4);  // by default the last 4 floats lie outside the input
  s.output("out", out.data_ptr(), outputs * 4, 4);
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
  if (name == "global_write_race") {
    return run([](const float* i, float* o) {
      launch<two_blocks_write_kernel<B>>(dim3(2), dim3(kN / 2), i, o);
    });
  }
  if (name == "global_read_race") {
    return run([](const float* i, float* o) {
      launch<cross_block_read_kernel<B>>(dim3(2), dim3(kN / 2), i, o);
    });
  }
  if (name == "global_race_in_block") {
    return run([](const float* i, float* o) { launch<block_write_order_kernel<B>>(dim3(1), dim3(kN), i, o); });
  }
  if (name == "storage_bounds") {
    return run([](const float* i, float* o) { launch<storage_bounds_kernel<B>>(dim3(1), dim3(kN), i, o); },
               kN, 2 * kN);
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
          "shared_over_limit", "grid_y_over_limit", "block_over_limit", "zero_grid",
          "global_write_race", "global_read_race", "global_race_in_block", "storage_bounds"};
}

at::Tensor run_case(const std::string& name, bool broken) {
  return broken ? case_for<true>(name) : case_for<false>(name);
}

}  // namespace iwae_emu::selftest
