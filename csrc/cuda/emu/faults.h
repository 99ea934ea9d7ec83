// Planted planner faults: kernel arguments broken the way a wrong stride in
// the planner (plan.cpp, ops_glue.h) would break them, for the tests that
// show the emulator catches such a bug (tests/test_cuda_emulator_checks.py).
// A planner's only output is the kernel arguments, so breaking them where
// the emulated backend receives them is that bug, with no test hook in the
// planner itself. None is planted unless a test asks.
#pragma once

#include <c10/util/Exception.h>

#include <string>
#include <type_traits>
#include <vector>

#include "../../kernel_args.h"

namespace iwae_emu {

enum class Fault {
  None,
  LogPOuterStride,  // log_p's outer stride doubled
  GradOutOuterStride,  // the gradient outputs' outer stride doubled
  GradInOuterStride,  // the incoming gradient's outer stride doubled
};

inline Fault& planted_fault() {
  static Fault f = Fault::None;
  return f;
}

inline const std::vector<std::string>& fault_names() {
  static const std::vector<std::string> names{"none", "log_p_outer_stride", "grad_out_outer_stride",
                                                "grad_in_outer_stride"};
  return names;
}

inline void plant_fault(const std::string& name) {
  const auto& names = fault_names();
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) {
      planted_fault() = static_cast<Fault>(i);
      return;
    }
  }
  TORCH_CHECK(false, "CUDA emulator: no planted fault named '", name, "'");
}

// The arguments as the planted fault breaks them.
template <class Args>
Args planted(Args a) {
  const Fault f = planted_fault();
  if (f == Fault::LogPOuterStride) a.p.so *= 2;
  if constexpr (!std::is_same_v<Args, iwae_fused::ReduceArgs>) {
    if (f == Fault::GradOutOuterStride) a.out_so *= 2;
    if (f == Fault::GradInOuterStride) a.g_so *= 2;
  }
  return a;
}

}  // namespace iwae_emu
