// The interface between the CPU op glue and the vectorised kernels, which are
// compiled once per instruction set (kernels_default.cpp, kernels_avx2.cpp,
// kernels_avx512.cpp) and picked at run time, as ATen's DispatchStub does.
#pragma once

#include <cstdint>

#include "../kernel_args.h"

namespace iwae_fused::cpu {

using ReduceFn = void (*)(const ReduceArgs&);
using WeightsFn = void (*)(const WeightsArgs&);
using RecomputesFn = bool (*)(const WeightsArgs&);
using VimcoFn = void (*)(const VimcoArgs&);

struct KernelTable {
  ReduceFn reduce;
  WeightsFn weights; // with null stats only where recomputes_stats says
  RecomputesFn recomputes_stats; // rows whose stats weights() recomputes (dense_rows.h)
  VimcoFn vimco_forward; // bound and state (vimco_lanes.h)
  VimcoFn vimco_backward; // both gradients from the state
  const char* name; // the instruction set, for diagnostics
};

// One table per compiled instruction set; null where not compiled.
const KernelTable* kernels_default();
const KernelTable* kernels_avx2();
const KernelTable* kernels_avx512();

// The best table this CPU runs, honouring ATEN_CPU_CAPABILITY like ATen.
const KernelTable& kernels();

// The last-level cache in bytes that the weights passes assume when they
// choose non-temporal stores (stream_stores.h); read once, from the
// environment variable IWAE_FUSED_LLC_BYTES or the C library
// (stream_stores.cpp). Throws on a bad value of the variable.
int64_t last_level_cache_bytes();

// Weights passes that chose non-temporal stores, since the process started
// (counted once per call; what the tests check that the stores are used).
void count_streamed_call();
int64_t streamed_calls();

} // namespace iwae_fused::cpu
