// The library's schemas (schemas.h). Backends register kernels for them under
// their dispatch keys (cpu/, cuda/); autograd.cpp wires the gradients and
// iwae_fused/ops.py the fake (meta) implementations.
#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(iwae_fused, m) {
  // Where the fake (meta) implementations live, for torch.compile/export.
  m.set_python_module("iwae_fused.ops");
  iwae_fused::define_schemas(m);
}
