#include "output_cache.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace iwae_fused::cpu {
namespace {

constexpr size_t kMinCachedBytes = size_t(1) << 20;
constexpr size_t kRound = size_t(64) << 10; // size classes: 64 KB steps
constexpr size_t kHugePage = size_t(2) << 20;
constexpr int64_t kDefaultBudgetMB = 1024;

// Transparent huge pages on the whole 2 MB pages of a block that has not
// been touched yet (the madvise PyTorch applies to large CPU tensors under
// THP_MEM_ALLOC_ENABLE=1): 16 faults per 32 MB instead of 8192. Advice only:
// where THP is off or unsupported the block keeps 4 KB pages.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < 2 * kHugePage) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

int64_t budget_from_env() {
  const char* s = std::getenv("IWAE_FUSED_CPU_CACHE_MB");
  if (!s || !*s) return kDefaultBudgetMB << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(s, &end, 10);
  TORCH_CHECK_VALUE(
      end && *end == '\0' && mb >= 0, "iwae_fused: expected IWAE_FUSED_CPU_CACHE_MB to be a "
      "whole number of megabytes >= 0 (0 turns the output cache off), but got '", s, "'");
  return static_cast<int64_t>(mb) << 20;
}

struct Block {
  void* ptr;
  size_t bytes;
};

class OutputCache final : public c10::Allocator {
 public:
  OutputCache() : budget_(budget_from_env()) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCachedBytes) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kRound - 1) / kRound * kRound;
    void* ptr = take(bytes);
    if (!ptr) {
      const size_t align = bytes >= 2 * kHugePage ? kHugePage : 64;
      if (posix_memalign(&ptr, align, bytes) != 0) {
        empty(); // free blocks of other sizes, then once more (as CUDA's cache does)
        TORCH_CHECK_WITH(
            OutOfMemoryError, posix_memalign(&ptr, align, bytes) == 0,
            "iwae_fused: CPU out of memory allocating ", bytes, " bytes for an output");
      }
      advise_huge_pages(ptr, bytes);
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.misses;
      live_.emplace(ptr, bytes);
      stats_.live_bytes += static_cast<int64_t>(bytes);
    }
    // Context = data (a "simple" DataPtr, as torch's own CPU allocator makes).
    return {ptr, ptr, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void empty() {
    std::vector<Block> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.swap(free_);
      stats_.cached_bytes = 0;
    }
    for (const Block& b : drop) std::free(b.ptr);
  }

  void lock() { mu_.lock(); }
  void unlock() { mu_.unlock(); }

  OutputCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    OutputCacheStats s = stats_;
    s.budget_bytes = budget_;
    return s;
  }

 private:
  // The most recently freed block of exactly this size, or null.
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = free_.size(); i-- > 0;) {
      if (free_[i].bytes != bytes) continue;
      void* ptr = free_[i].ptr;
      free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
      stats_.cached_bytes -= static_cast<int64_t>(bytes);
      stats_.live_bytes += static_cast<int64_t>(bytes);
      ++stats_.hits;
      live_.emplace(ptr, bytes);
      return ptr;
    }
    return nullptr;
  }

  static void release(void* ptr);

  void give_back(void* ptr) {
    std::vector<Block> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto it = live_.find(ptr);
      TORCH_INTERNAL_ASSERT(it != live_.end(), "iwae_fused: a block the output cache never made");
      const size_t bytes = it->second;
      live_.erase(it);
      stats_.live_bytes -= static_cast<int64_t>(bytes);
      free_.push_back({ptr, bytes});
      stats_.cached_bytes += static_cast<int64_t>(bytes);
      // Over budget: release the oldest free blocks (this one too, if it
      // alone exceeds the budget).
      size_t n = 0;
      while (stats_.cached_bytes > budget_) {
        stats_.cached_bytes -= static_cast<int64_t>(free_[n].bytes);
        drop.push_back(free_[n++]);
      }
      free_.erase(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(n));
    }
    for (const Block& b : drop) std::free(b.ptr);
  }

  const int64_t budget_;
  std::mutex mu_;
  std::vector<Block> free_; // oldest first
  std::unordered_map<void*, size_t> live_;
  OutputCacheStats stats_;
};

OutputCache& cache() {
  static OutputCache* c = [] {
    auto* made = new OutputCache(); // never destroyed, see the header
#if defined(__unix__) || defined(__APPLE__)
    // A fork while another thread holds the lock would leave the child's
    // copy locked for good (DataLoader workers fork): hold it across fork.
    pthread_atfork([] { cache().lock(); }, [] { cache().unlock(); }, [] { cache().unlock(); });
#endif
    return made;
  }();
  return *c;
}

void OutputCache::release(void* ptr) { cache().give_back(ptr); }

} // namespace

c10::Allocator* output_allocator() { return &cache(); }

void empty_cache() { cache().empty(); }

OutputCacheStats output_cache_stats() { return cache().stats(); }

} // namespace iwae_fused::cpu
