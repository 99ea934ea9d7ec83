// The CUDA VIMCO kernels: the very source nvcc compiles, compiled here by the
// host compiler for the emulator.
#include "coverage.h"
#include "../vimco_cuda.cu"
