// The emulator's self-test: kernels that each break one rule the emulator
// checks, and their correct twins (selftest.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace iwae_emu::selftest {

std::vector<std::string> cases();
// Runs a case's broken or correct kernel; returns its output.
at::Tensor run_case(const std::string& name, bool broken);

}  // namespace iwae_emu::selftest
