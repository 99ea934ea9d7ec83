// The CUDA VIMCO kernels: the very source nvcc compiles, compiled here by the
// host compiler for the emulator.
#include "../vimco_cuda.cu"
