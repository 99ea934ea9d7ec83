// CUDA's execution model for the host compiler: what lets the very .cu
// source that nvcc compiles be compiled a second time by g++ and executed on
// the CPU by the emulator (runtime.cpp), with the checks a GPU run (and
// compute-sanitizer) would make.
//
// Only included when IWAE_CUDA_EMU is defined (cuda/device_api.h picks it
// instead of the CUDA runtime). What the kernels may use:
//  * qualifiers (__global__, __device__, __host__, __forceinline__,
//    __launch_bounds__) as no-ops;
//  * threadIdx, blockIdx, blockDim, gridDim, warpSize: the running emulated
//    thread's values;
//  * __syncthreads, __syncwarp and the __shfl_*_sync family, which block the
//    calling emulated thread until its partners arrive, and fail (never hang)
//    when they cannot: a mask naming a lane that does not arrive, lanes at
//    different call sites, a barrier some thread never reaches;
//  * memory through ld_global / st_global / ld_shared / st_shared, which
//    check bounds, alignment, initialisation and races, and count bytes and
//    32-byte sectors per warp-level request; IWAE_SHARED declares per-block
//    shared memory. A bare __shared__ does not compile here, and neither does
//    indexing or dereferencing an IWAE_SHARED array (`sm[i] = x`, `*(sm + i)`):
//    the array is an object whose only use is `sm + i`, a checked pointer
//    that only ld_shared / st_shared accept, so no kernel can bypass the
//    checks (under nvcc it is a plain __shared__ array, device_api.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Shared memory goes through IWAE_SHARED (below), never a bare __shared__.
#define __shared__ static_assert(false, "declare shared memory with IWAE_SHARED(type, name, count)");

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace iwae_emu {

// What CUDA's built-in variables read for the emulated thread now running.
struct ThreadIndex {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
const ThreadIndex& current_index();

// The warp-level operations, by kind (for messages and for matching lanes
// that meet at one call site).
enum class WarpOp : int { ShflXor, ShflDown, ShflUp, ShflIdx, SyncWarp };

// One lane's part in a warp-level operation: blocks until every lane of
// `mask` has arrived at the same call site, then returns the bits of the
// source lane's value (or the lane's own, where the source is outside the
// width segment, as on the device).
uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t bits, int arg, int width,
                       const char* file, int line, int instructions = 1);
void sync_block(const char* file, int line);

// Shared memory of the running block: registered at first use in a block
// (bounds, the static shared-memory limit, a poisoned fill, a fresh shadow).
void declare_shared(void* base, size_t bytes, const char* name);

// Checked accesses (bounds, alignment, initialisation; races for shared);
// `bytes` is the access width, which must be a power of two.
void check_global(const void* p, size_t bytes, bool store);
void check_shared(const void* p, size_t bytes, bool store);

// Counters (benchmarks/GPU-COUNTS.md): exponentials and logarithms.
void count_exp();
void count_log();

}  // namespace iwae_emu

#define threadIdx (::iwae_emu::current_index().thread_idx)
#define blockIdx (::iwae_emu::current_index().block_idx)
#define blockDim (::iwae_emu::current_index().block_dim)
#define gridDim (::iwae_emu::current_index().grid_dim)
#define warpSize 32

// Per-block shared memory: one array per declaration, which the emulator
// registers for the block running it. thread_local because each host thread
// runs one block at a time, and the block's emulated threads all run on it.
#define IWAE_SHARED(T, name, count)                          \
  static thread_local ::iwae_emu::SharedArray<T, (count)> name; \
  ::iwae_emu::declare_shared(::iwae_emu::detail::storage(name), sizeof(name), #name)

namespace iwae_emu {

template <typename T>
class SharedPtr;
template <typename T, size_t N>
class SharedArray;
namespace detail {
template <typename T>
T* unchecked(SharedPtr<T> p);
template <typename T, size_t N>
void* storage(SharedArray<T, N>& a);
}  // namespace detail

// A position in an IWAE_SHARED array: what `name + i` gives. It moves by
// further offsets and is read and written only through ld_shared and
// st_shared; it has no dereference, so `*(sm + i)` does not compile.
template <typename T>
class SharedPtr {
 public:
  template <typename I, typename = std::enable_if_t<std::is_integral_v<I>>>
  SharedPtr operator+(I i) const {
    return SharedPtr(p_ + i);
  }

 private:
  template <typename, size_t>
  friend class SharedArray;
  friend T* detail::unchecked<T>(SharedPtr<T>);
  explicit SharedPtr(T* p) : p_(p) {}
  T* p_;
};

// An IWAE_SHARED array: no indexing and no decay to a pointer; `name + i`
// is its one operation.
template <typename T, size_t N>
class SharedArray {
 public:
  template <typename I, typename = std::enable_if_t<std::is_integral_v<I>>>
  SharedPtr<T> operator+(I i) const {
    return SharedPtr<T>(const_cast<T*>(data_) + i);
  }
  template <typename I>
  void operator[](I) const {
    static_assert(sizeof(I) == 0,
                  "shared memory is accessed with ld_shared(name + i) / st_shared(name + i, v), "
                  "which the emulator checks, never by indexing");
  }

 private:
  friend void* detail::storage<T, N>(SharedArray<T, N>&);
  T data_[N];
};

namespace detail {
// The raw address, for the emulator's own checked accessors and the
// registration of the array (never for kernel code).
template <typename T>
T* unchecked(SharedPtr<T> p) {
  return p.p_;
}
template <typename T, size_t N>
void* storage(SharedArray<T, N>& a) {
  return a.data_;
}
}  // namespace detail

}  // namespace iwae_emu

namespace iwae_emu::detail {
template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a value over 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
}  // namespace iwae_emu::detail

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                  const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return iwae_emu::detail::from_bits<T>(iwae_emu::warp_exchange(
      iwae_emu::WarpOp::ShflXor, mask, iwae_emu::detail::to_bits(v), lane_mask, width, file, line,
      sizeof(T) > 4 ? 2 : 1));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                   const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return iwae_emu::detail::from_bits<T>(iwae_emu::warp_exchange(
      iwae_emu::WarpOp::ShflDown, mask, iwae_emu::detail::to_bits(v), (int)delta, width, file, line,
      sizeof(T) > 4 ? 2 : 1));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return iwae_emu::detail::from_bits<T>(iwae_emu::warp_exchange(
      iwae_emu::WarpOp::ShflUp, mask, iwae_emu::detail::to_bits(v), (int)delta, width, file, line,
      sizeof(T) > 4 ? 2 : 1));
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32,
              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return iwae_emu::detail::from_bits<T>(iwae_emu::warp_exchange(
      iwae_emu::WarpOp::ShflIdx, mask, iwae_emu::detail::to_bits(v), src_lane, width, file, line,
      sizeof(T) > 4 ? 2 : 1));
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  iwae_emu::warp_exchange(iwae_emu::WarpOp::SyncWarp, mask, 0, 0, 32, file, line);
}
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  iwae_emu::sync_block(file, line);
}

// The kernels' only ways to global and shared memory (plain dereferences
// under nvcc: global_memory.h). Always inlined, so that the emulator sees
// each access's call site in the kernel: the lanes of a warp at the same site
// (and the same dynamic count there) form one warp-level request.
#define IWAE_EMU_INLINE inline __attribute__((always_inline))
template <typename T>
IWAE_EMU_INLINE T ld_global(const T* p) {
  iwae_emu::check_global(p, sizeof(T), false);
  return *p;
}
template <typename T, typename V>
IWAE_EMU_INLINE void st_global(T* p, V v) {
  iwae_emu::check_global(p, sizeof(T), true);
  *p = static_cast<T>(v);
}
template <typename T>
IWAE_EMU_INLINE T ld_shared(iwae_emu::SharedPtr<T> p) {
  T* raw = iwae_emu::detail::unchecked(p);
  iwae_emu::check_shared(raw, sizeof(T), false);
  return *raw;
}
template <typename T, typename V>
IWAE_EMU_INLINE void st_shared(iwae_emu::SharedPtr<T> p, V v) {
  T* raw = iwae_emu::detail::unchecked(p);
  iwae_emu::check_shared(raw, sizeof(T), true);
  *raw = static_cast<T>(v);
}
