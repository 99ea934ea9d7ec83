// Argument checks and the [outer, K, inner] geometry that every kernel runs on.
//
// Device-independent: the CPU and CUDA backends both call make_plan() and then
// launch their own kernels on the geometry it returns, so argument errors and
// broadcasting/dtype rules are identical everywhere (and mirrored by the fake
// implementations in iwae_fused/ops.py for meta/fake tensors).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <initializer_list>
#include <optional>

namespace iwae_fused {

// One input seen through the geometry: element (o, k, i) lives at
// data + o * so + k * sk + i * si (strides in elements; a broadcast input has
// stride 0 on the broadcast axis).
struct Operand {
  at::Tensor tensor; // keeps the (possibly converted) data alive
  int64_t so = 0, sk = 0, si = 0;
};

struct Plan {
  c10::SmallVector<int64_t, 6> shape; // broadcast shape of log_p and log_q
  int64_t dim = 0; // the sample dim, wrapped; 0 for 0-dim inputs
  int64_t outer = 1, K = 1, inner = 1;
  // true: the kernels vectorise along K (every operand has sk == 1, "rows").
  // false: they vectorise along the inner axis (si == 1, "columns").
  bool vec_k = false;
  // Columns through a transposed input: the geometry's inner axis is the
  // tensor's leading dims, and the geometry's outer axis is empty.
  bool swapped = false;
  at::ScalarType dtype = at::kFloat; // promoted dtype of log_p and log_q
  Operand p, q;
  bool has_q = false;

  int64_t num_outputs() const { return outer * inner; }
  // Shape of the reduced result (dim removed, or kept as size 1).
  c10::SmallVector<int64_t, 6> out_shape(bool keepdim) const;
  // A tensor of the full broadcast shape laid out like the geometry, with unit
  // stride on the vectorised axis; its geometry strides go to so/sk/si. Its
  // memory comes from `alloc` if given (the CPU backend's output cache),
  // else from the device's default allocator.
  at::Tensor empty_full(
      at::ScalarType dtype, int64_t& so, int64_t& sk, int64_t& si,
      c10::Allocator* alloc = nullptr) const;
  // Strides (so, si) of a tensor of the bound's shape (keepdim or not) over
  // the geometry's outputs; false if its dims do not collapse.
  bool output_strides(const at::Tensor& t, bool keepdim, int64_t& so, int64_t& si) const;
};

// Checks the arguments (naming the op and the argument in every error),
// promotes dtypes, broadcasts, and finds a geometry without copying whenever
// the strides allow it. `op` is the user-facing name used in messages.
Plan make_plan(
    const char* op,
    const at::Tensor& log_p,
    const std::optional<at::Tensor>& log_q,
    int64_t dim);

// A tensor argument and its name, for common_device.
struct NamedTensor {
  const char* name;
  const at::Tensor* tensor; // null or undefined: an absent optional argument
};

// The device every given tensor is on, or an error naming the first
// argument that is elsewhere. Ops check this before anything touches a
// device (a backend's device guard included).
c10::Device common_device(const char* op, std::initializer_list<NamedTensor> tensors);

// The dtype the kernels accumulate in: float for half types, else the dtype.
at::ScalarType opmath_dtype(at::ScalarType dtype);

} // namespace iwae_fused
