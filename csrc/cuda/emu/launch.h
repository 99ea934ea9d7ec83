// The emulator's side of cuda/device_api.h: the launch, device limits and
// workspace that the CUDA host code asks for, answered on the CPU.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "simt.h"

namespace iwae_emu {

// "reduce_rows_kernel<float, 4, 32, true>" from a __PRETTY_FUNCTION__ that
// names the kernel as a template argument.
std::string kernel_name_from(const char* pretty);

template <auto Kernel>
const std::string& kernel_name() {
  static const std::string name = kernel_name_from(__PRETTY_FUNCTION__);
  return name;
}

// Checks the configuration against the emulated device's limits (an error
// where the device would refuse the launch), then runs every block, each
// thread calling body(ctx).
void run_grid(const std::string& name, dim3 grid, dim3 block, void (*body)(void*), void* ctx,
              std::vector<int64_t> int_args = {});

// Resident blocks per SM of a kernel on the emulated device (runtime.h).
int resident_blocks_of(const std::string& name, int threads);

bool register_instantiation(const std::string& kernel);

// Instantiated with launch<Kernel> (below), so every kernel the host code can
// launch, whatever branch of its dispatch picks it, is registered at load.
template <auto Kernel>
struct Launchable {
  static const bool registered;
};
template <auto Kernel>
const bool Launchable<Kernel>::registered = register_instantiation(kernel_name<Kernel>());

}  // namespace iwae_emu

namespace iwae_fused::cuda::dev {

template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, const Args&... args) {
  (void)iwae_emu::Launchable<Kernel>::registered;
  auto call = [&] { Kernel(args...); };  // each emulated thread: its own copies
  std::vector<int64_t> ints;
  (
      [&] {
        if constexpr (std::is_integral_v<Args>) ints.push_back(static_cast<int64_t>(args));
      }(),
      ...);
  iwae_emu::run_grid(
      iwae_emu::kernel_name<Kernel>(), grid, block,
      [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call, std::move(ints));
}

template <auto Kernel>
int resident_blocks(int threads) {
  return iwae_emu::resident_blocks_of(iwae_emu::kernel_name<Kernel>(), threads);
}

}  // namespace iwae_fused::cuda::dev
