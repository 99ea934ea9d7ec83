// What the training forward of iwelbo keeps for its backward: the
// per-example stats (shift, log-sum) that _iwelbo_forward writes, or nothing
// where the device's backward recomputes them from the inputs it reads
// anyway (rows that fit a 16-byte vector on the GPU: the stats would be 16
// of 72 bytes per example of a float32 K = 2 training step with log_q).
// Defined in autograd.cpp, which asks it per call.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace iwae_fused {

// Whether the forward of iwelbo(log_p, log_q, dim, alpha) skips the stats:
// a GPU tensor (or one of the emulated GPU's, below), dense rows with the
// sample dim last (or K = 1), K dividing 16 / itemsize, log_q (if any) of
// the same shape and dtype, concrete sizes, and a Renyi beta = 1 - alpha the
// kernels take directly (not the ELBO, not near it). The CPU always saves
// them: its backward can recompute them for rows of 2, 4 or 8 samples, but
// its training step there is bound by arithmetic, not bytes, and measured
// 0.86-1.22x the step with saved stats (benchmarks/NOTES.md, CPU 23).
bool backward_recomputes_stats(
    const at::Tensor& log_p, const std::optional<at::Tensor>& log_q, int64_t dim,
    double alpha);

// CPU tensors stand for GPU tensors while the CUDA emulator runs the ops
// (iwae_fused/cuda_emulator.py sets this), so the emulated training step
// saves what a GPU's would.
void set_cpu_stands_for_gpu(bool on);
bool cpu_stands_for_gpu();

} // namespace iwae_fused
