// The cache size behind the weights passes' choice of non-temporal stores
// (stream_stores.h), compiled once for every instruction set's kernels.
#include <c10/util/Exception.h>
#if __has_include(<unistd.h>)
#include <unistd.h>
#endif

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>

#include "kernel_api.h"

namespace iwae_fused::cpu {
namespace {

int64_t cache_bytes_from_env_or_system() {
  // A virtual machine may report its host's whole L3 (this package's
  // 2-core benchmark VM reports 300 MB), hence the override; 0 makes every
  // float and double gradient stream.
  if (const char* s = std::getenv("IWAE_FUSED_LLC_BYTES"); s && *s) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(s, &end, 10);
    TORCH_CHECK_VALUE(
        std::isdigit(static_cast<unsigned char>(*s)) && end && *end == '\0' &&
            errno == 0 && v >= 0,
        "iwae_fused: expected IWAE_FUSED_LLC_BYTES to be a whole number of "
        "bytes >= 0 (the last-level cache the CPU kernels assume), but got '",
        s, "'");
    return static_cast<int64_t>(v);
  }
#if defined(_SC_LEVEL3_CACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
  if (const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE); l3 > 0) return l3;
  if (const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE); l2 > 0) return l2;
#endif
  return int64_t(32) << 20; // a common server socket's share
}

std::atomic<int64_t> streamed{0};

} // namespace

void count_streamed_call() { streamed.fetch_add(1, std::memory_order_relaxed); }

int64_t streamed_calls() { return streamed.load(std::memory_order_relaxed); }

int64_t last_level_cache_bytes() {
  static const int64_t bytes = cache_bytes_from_env_or_system();
  return bytes;
}

} // namespace iwae_fused::cpu
