#include "plan.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ExpandUtils.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/result_type.h>
#include <c10/util/Exception.h>

#include <sstream>

namespace iwae_fused {
namespace {

// Users know dtypes by their Python names.
const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return c10::toString(t);
  }
}

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf ||
      t == at::kBFloat16;
}

void check_input(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(
      supported_dtype(t.scalar_type()), op, "(): expected ", name,
      " to be a floating-point tensor (torch.float32, torch.float64, "
      "torch.float16 or torch.bfloat16), but got ",
      dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(
      t.layout() == at::kStrided, op, "(): expected ", name,
      " to be a dense (strided) tensor, but got layout ", t.layout());
}

c10::SmallVector<int64_t, 6> broadcast_shapes(
    const char* op, at::IntArrayRef a, at::IntArrayRef b) {
  const int64_t n = std::max(a.size(), b.size());
  c10::SmallVector<int64_t, 6> out(n);
  for (int64_t i = n - 1; i >= 0; --i) {
    const int64_t ia = i - (n - (int64_t)a.size());
    const int64_t ib = i - (n - (int64_t)b.size());
    const int64_t sa = ia >= 0 ? a[ia] : 1;
    const int64_t sb = ib >= 0 ? b[ib] : 1;
    TORCH_CHECK_VALUE(
        sa == sb || sa == 1 || sb == 1, op, "(): log_p of shape ", a,
        " and log_q of shape ", b, " do not broadcast: sizes ", sa, " and ",
        sb, " differ at dimension ", i - n,
        " (shapes must be equal or 1 there, as for log_p - log_q)");
    out[i] = sa == 1 ? sb : sa;
  }
  return out;
}

// The stride with which dims [b, e) walk as one row-major axis, or nullopt
// when they cannot (size-1 dims place no constraint).
std::optional<int64_t> collapse(
    at::IntArrayRef sizes, at::IntArrayRef strides, int64_t b, int64_t e) {
  bool seen = false;
  int64_t stride = 0, expected = 0;
  for (int64_t d = e - 1; d >= b; --d) {
    if (sizes[d] == 1) continue;
    if (seen && strides[d] != expected) return std::nullopt;
    if (!seen) stride = strides[d];
    seen = true;
    expected = strides[d] * sizes[d];
  }
  return stride;
}

enum class Layout { Rows, Cols, Swapped };

// Strides of t (already of the broadcast shape) in the geometry; false if the
// dims around `dim` do not collapse. With pl.swapped the tensor's outer dims
// become the geometry's inner axis.
bool geometry_strides(const Plan& pl, const at::Tensor& t, Operand& op) {
  op.so = op.sk = op.si = 0;
  if (t.dim() == 0) return true;
  const auto so = collapse(t.sizes(), t.strides(), 0, pl.dim);
  const auto si = collapse(t.sizes(), t.strides(), pl.dim + 1, t.dim());
  if (!so || !si) return false;
  op.sk = t.stride(pl.dim);
  if (pl.swapped) {
    op.si = *so; // the tensor's inner dims all have size 1 here
  } else {
    op.so = *so;
    op.si = *si;
  }
  return true;
}

// Whether an operand can be walked by the kernels of the plan's layout: unit
// stride on the vectorised axis (a size-1 axis walks with any stride).
bool fits(const Plan& pl, const Operand& op) {
  return pl.vec_k ? (op.sk == 1 || pl.K == 1)
                  : (op.si == 1 || pl.inner == 1);
}

// Copy t into a fresh tensor laid out like the geometry: the one slow path,
// for strides that the layout cannot walk (broadcasts inside the batch dims,
// slices with steps, or log_q laid out unlike log_p).
at::Tensor materialize(const Plan& pl, const at::Tensor& t, Operand& op) {
  at::Tensor out = pl.empty_full(t.scalar_type(), op.so, op.sk, op.si);
  out.copy_(t);
  return out;
}

} // namespace

c10::Device common_device(const char* op, std::initializer_list<NamedTensor> tensors) {
  const NamedTensor* first = nullptr;
  for (const NamedTensor& t : tensors) {
    if (!t.tensor || !t.tensor->defined()) continue;
    if (!first) {
      first = &t;
      continue;
    }
    TORCH_CHECK(
        t.tensor->device() == first->tensor->device(), op,
        "(): expected all tensors on the same device, but ", first->name, " is on ",
        first->tensor->device(), " and ", t.name, " is on ", t.tensor->device());
  }
  TORCH_CHECK(first, op, "(): no tensor argument");
  return first->tensor->device();
}

at::ScalarType opmath_dtype(at::ScalarType dtype) {
  return (dtype == at::kHalf || dtype == at::kBFloat16) ? at::kFloat : dtype;
}

c10::SmallVector<int64_t, 6> Plan::out_shape(bool keepdim) const {
  c10::SmallVector<int64_t, 6> s(shape);
  if (s.empty()) return s;
  if (keepdim) {
    s[dim] = 1;
  } else {
    s.erase(s.begin() + dim);
  }
  return s;
}

at::Tensor Plan::empty_full(
    at::ScalarType dt, int64_t& so, int64_t& sk, int64_t& si,
    c10::Allocator* alloc) const {
  // Memory order of the geometry: rows keep K innermost, columns keep the
  // inner axis innermost (for the swapped case, the tensor's leading dims).
  if (vec_k) {
    so = inner * K, sk = 1, si = K;
  } else {
    so = K * inner, sk = inner, si = 1;
  }
  const int64_t n = shape.size();
  c10::SmallVector<int64_t, 6> strides(n);
  int64_t run = 1;
  for (int64_t d = n - 1; d > dim; --d) { // inner dims
    strides[d] = run * (swapped ? 1 : si);
    run *= shape[d];
  }
  if (n > 0) strides[dim] = sk;
  run = 1;
  for (int64_t d = dim - 1; d >= 0; --d) { // outer dims
    strides[d] = run * (swapped ? si : so);
    run *= shape[d];
  }
  if (swapped) so = 0;
  if (alloc) { // a CPU backend's own allocator
    TORCH_INTERNAL_ASSERT(p.tensor.device().is_cpu());
    return at::detail::empty_strided_generic(
        shape, strides, alloc, c10::DispatchKeySet(c10::DispatchKey::CPU), dt);
  }
  return at::empty_strided(
      shape, strides, at::TensorOptions().dtype(dt).device(p.tensor.device()));
}

bool Plan::output_strides(
    const at::Tensor& t, bool keepdim, int64_t& so, int64_t& si) const {
  so = si = 0;
  if (shape.empty()) return true;
  // The dims before and after `dim`; without keepdim, t lacks `dim` itself,
  // so its dims from `dim` on are the ones after it.
  const int64_t after = keepdim ? dim + 1 : dim;
  const auto o = collapse(t.sizes(), t.strides(), 0, dim);
  const auto i = collapse(t.sizes(), t.strides(), after, t.dim());
  if (!o || !i) return false;
  if (swapped) {
    si = *o; // the tensor's inner dims all have size 1 here
  } else {
    so = *o;
    si = *i;
  }
  if (outer == 1) so = 0;
  if (inner == 1) si = 0;
  return true;
}

Plan make_plan(
    const char* op,
    const at::Tensor& log_p,
    const std::optional<at::Tensor>& log_q,
    int64_t dim) {
  Plan pl;
  check_input(op, "log_p", log_p);
  pl.has_q = log_q.has_value() && log_q->defined();
  if (pl.has_q) {
    check_input(op, "log_q", *log_q);
    common_device(op, {{"log_p", &log_p}, {"log_q", &*log_q}});
    pl.shape = broadcast_shapes(op, log_p.sizes(), log_q->sizes());
    pl.dtype = at::result_type(log_p, *log_q);
  } else {
    pl.shape.assign(log_p.sizes().begin(), log_p.sizes().end());
    pl.dtype = log_p.scalar_type();
  }

  const int64_t ndim = pl.shape.size();
  const int64_t span = std::max<int64_t>(ndim, 1); // 0-dim acts as [1]
  TORCH_CHECK_INDEX(
      dim >= -span && dim < span, op, "(): dim=", dim,
      " is out of range for log-weights of shape ", at::IntArrayRef(pl.shape),
      " (expected dim in [", -span, ", ", span - 1, "])");
  pl.dim = dim < 0 ? dim + span : dim;
  if (ndim == 0) pl.dim = 0;

  pl.K = ndim == 0 ? 1 : pl.shape[pl.dim];
  TORCH_CHECK_VALUE(
      pl.K > 0, op, "(): the sample dimension dim=", dim,
      " has size 0, but at least one importance sample is needed "
      "(log-weights of shape ",
      at::IntArrayRef(pl.shape), ")");
  for (int64_t d = 0; d < pl.dim; ++d) pl.outer *= pl.shape[d];
  for (int64_t d = pl.dim + 1; d < ndim; ++d) pl.inner *= pl.shape[d];

  // (An operand of the broadcast shape already is taken as it is: a view
  // costs a dispatch, ~0.3 us of a 17 us training step; NOTES.md CPU 26.)
  auto broadcast = [&](const at::Tensor& t) {
    at::Tensor c = t.to(pl.dtype);
    return ndim == 0 || c.sizes() == at::IntArrayRef(pl.shape) ? c : c.expand(pl.shape);
  };
  pl.p.tensor = broadcast(log_p);
  if (pl.has_q) pl.q.tensor = broadcast(*log_q);
  if (pl.num_outputs() == 0) return pl; // empty batch: nothing to lay out

  // log_p picks the layout, in this order of preference: its natural one
  // (rows for inner == 1, else columns), columns through a transposed input,
  // rows through a permuted one. log_q is copied into that layout only if its
  // own strides cannot follow.
  Operand p0;
  const bool p_ok = geometry_strides(pl, pl.p.tensor, p0);
  const bool rows_ok = p_ok && (p0.sk == 1 || pl.K == 1);
  const bool cols_ok = p_ok && p0.si == 1;
  Layout layout = pl.inner == 1 ? Layout::Rows : Layout::Cols;
  bool p_fits = true;
  if (pl.inner == 1 && rows_ok) {
    layout = Layout::Rows;
  } else if (pl.inner > 1 && cols_ok) {
    layout = Layout::Cols;
  } else if (p_ok && pl.inner == 1 && pl.outer > 1 && p0.so == 1) {
    layout = Layout::Swapped;
  } else if (rows_ok) {
    layout = Layout::Rows;
  } else {
    p_fits = false;
  }
  pl.vec_k = layout == Layout::Rows;
  pl.swapped = layout == Layout::Swapped;
  if (pl.swapped) {
    pl.inner = pl.outer;
    pl.outer = 1;
  }
  if (p_fits) {
    geometry_strides(pl, pl.p.tensor, pl.p);
  } else {
    pl.p.tensor = materialize(pl, pl.p.tensor, pl.p);
  }
  if (pl.has_q &&
      !(geometry_strides(pl, pl.q.tensor, pl.q) && fits(pl, pl.q))) {
    pl.q.tensor = materialize(pl, pl.q.tensor, pl.q);
  }
  if (pl.K == 1) pl.p.sk = pl.q.sk = 1; // any stride walks one sample
  return pl;
}

} // namespace iwae_fused
