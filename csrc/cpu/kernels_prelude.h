// Every header the kernels need except at::vec, included before a
// kernels_<isa>.cpp switches the code-generation target. Inline functions
// from these headers are then compiled for the baseline target only, so the
// linker can never pick an AVX copy of them for code that runs on any CPU.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../vimco_math.h" // its scalar functions, baseline-only (vimco_lanes.h)
#include "denormals.h"
#include "kernel_api.h"
// Not ../online_lse.h: it is compiled per instruction set (see there).
