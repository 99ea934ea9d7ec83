// Which storages an emulated op owns (allocations.h says why).
//
// The emulated device's memory is host memory from the CPU allocator, so the
// allocations an op makes are seen by standing a recording allocator in for
// the CPU one while the op runs; it delegates every allocation and free to
// the allocator it replaced. Frees are recorded whenever they happen (a
// storage made during an op may die long after it).
#include "allocations.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <map>
#include <mutex>

namespace iwae_emu {
namespace {

std::mutex g_mu;
std::map<uintptr_t, uintptr_t> g_known;  // lo -> hi of every known storage
int g_depth = 0;

void add(uintptr_t lo, uintptr_t hi) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto& h = g_known[lo];
  h = std::max(h, hi);
}

class RecordingAllocator final : public c10::Allocator {
 public:
  c10::Allocator* base = nullptr;

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base->allocate(n);
    void* ptr = inner.get();
    if (!ptr || n == 0) return inner;
    const c10::Device dev = inner.device();
    auto* ctx = new Owned{std::move(inner)};
    add(reinterpret_cast<uintptr_t>(ptr), reinterpret_cast<uintptr_t>(ptr) + n);
    return c10::DataPtr(ptr, ctx, &Owned::release, dev);
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  struct Owned {
    c10::DataPtr inner;  // frees through the allocator that made it
    static void release(void* ctx) {
      auto* o = static_cast<Owned*>(ctx);
      {
        std::lock_guard<std::mutex> lock(g_mu);
        g_known.erase(reinterpret_cast<uintptr_t>(o->inner.get()));
      }
      delete o;
    }
  };
};

RecordingAllocator& recorder() {
  static RecordingAllocator* r = new RecordingAllocator();  // outlives every storage it made
  return *r;
}

}  // namespace

std::optional<Allocation> find_allocation(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_known.upper_bound(a);
  if (it == g_known.begin()) return std::nullopt;
  --it;
  if (a >= it->second) return std::nullopt;
  return Allocation{it->first, it->second};
}

OpMemory::OpMemory() {
  if (g_depth++ > 0) return;
  RecordingAllocator& r = recorder();
  c10::Allocator* current = c10::GetCPUAllocator();
  if (current != &r) {
    r.base = current;
    c10::SetCPUAllocator(&r);
    TORCH_CHECK(c10::GetCPUAllocator() == &r,
                "CUDA emulator: could not stand in for the CPU allocator");
  }
}

OpMemory::~OpMemory() {
  if (--g_depth > 0) return;
  RecordingAllocator& r = recorder();
  // Back to the allocator it replaced; storages made meanwhile keep their own
  // deleter (which still forgets them), and the op's arguments are forgotten.
  c10::SetCPUAllocator(r.base);
  std::lock_guard<std::mutex> lock(g_mu);
  g_known.clear();
}

void OpMemory::note(const void* base, int64_t bytes) {
  if (!base || bytes <= 0) return;
  const auto lo = reinterpret_cast<uintptr_t>(base);
  add(lo, lo + static_cast<uintptr_t>(bytes));
}

}  // namespace iwae_emu
