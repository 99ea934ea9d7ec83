// The CUDA reduction and weights kernels and their launch logic: the very
// source nvcc compiles, compiled here by the host compiler for the emulator.
#include "coverage.h"
#include "../kernels_cuda.cu"
