// How the emulated CUDA build counts exponentials and logarithms.
//
// The CUDA source run by the emulator counts every exponential and logarithm
// it evaluates (benchmarks/GPU-COUNTS.md, the GPU model's SFU bound); in every
// other build the macros are nothing. A header of its own so that the scalar
// math (vimco_math.h), which the CPU kernels include before any instruction
// set's target options, can count without pulling in the vector code of
// online_lse.h.
#pragma once

#if defined(IWAE_CUDA_EMU)
#include "cuda/emu/simt.h"
#define IWAE_COUNT_EXP() ::iwae_emu::count_exp()
#define IWAE_COUNT_LOG() ::iwae_emu::count_log()
#else
#define IWAE_COUNT_EXP()
#define IWAE_COUNT_LOG()
#endif
