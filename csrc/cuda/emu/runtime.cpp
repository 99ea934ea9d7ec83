// The emulator's execution engine: runs a launch block by block on the
// calling host thread, each emulated CUDA thread a fiber (fiber.h says why),
// and makes the checks a GPU run with compute-sanitizer would make.
//
// Scheduling: a block's fibers run round-robin, each until it blocks at a
// barrier or a warp-level operation or finishes. An operation completes when
// its last partner arrives, which makes the waiting ones runnable again. If
// no fiber can run while some have not finished, they wait for a partner
// that will never come: that is reported (who waits where, who is missing),
// never waited out.
//
// Warp-level operations are matched by mask and call site: the lanes a mask
// names must all reach the same call (the same file and line) with the same
// mask, and none of them may have exited; lanes outside the mask may run a
// different group's operation at the same time (sub-warp groups). A
// __syncthreads must be reached, at one call site, by every thread of the
// block.
//
// Shared memory: every byte keeps its last writer and reader within the
// current barrier interval (the "epoch", advanced by each __syncthreads): an
// access by another thread that conflicts with them (one of the two a write)
// is a race, as compute-sanitizer's racecheck reports it. __syncwarp does not
// order shared accesses here (no kernel communicates through shared memory
// within a warp); racecheck would accept such code, this would flag it.
//
// Global memory, within a launch: every element of an output or workspace
// keeps its last writer (block, thread, epoch) and, if read, its readers. A
// conflicting access (one of the two a write) by another thread is a race
// unless both threads are in one block with a __syncthreads between: CUDA
// orders nothing across the blocks of a launch, which the emulator runs one
// after another, so without this check a block reading what an earlier one
// wrote would always pass. (No kernel uses atomics; none are modelled.)
// Launches are ordered (one stream), so the record starts afresh with each.
#include "runtime.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "allocations.h"
#include "fiber.h"
#include "../device_api.h"
#include "launch.h"
#include "simt.h"

namespace iwae_emu {

DeviceProps& device() {
  static DeviceProps d;
  return d;
}

std::vector<LaunchRecord>& launch_log() {
  static std::vector<LaunchRecord> log;
  return log;
}

Schedule& schedule() {
  static Schedule s;
  return s;
}

namespace {
std::vector<std::string>& registry() {
  static std::vector<std::string> r;
  return r;
}
std::map<std::string, int64_t>& counts() {
  static std::map<std::string, int64_t> c;
  return c;
}
}  // namespace

bool register_instantiation(const std::string& kernel) {
  auto& r = registry();
  if (std::find(r.begin(), r.end(), kernel) == r.end()) r.push_back(kernel);
  return true;
}

const std::vector<std::string>& instantiations() {
  return registry();
}

const std::map<std::string, int64_t>& launch_counts() {
  return counts();
}

bool count_requests = false;
bool plan_only = false;

namespace {

constexpr size_t kStackBytes = 64 * 1024;

// ---- global memory: the regions of the op being run ------------------------

// The last write of an element within the launch: the block (+1; 0: none),
// and the thread and the block's barrier epoch, packed.
struct LastWrite {
  uint32_t block = 0;
  uint32_t thread_epoch = 0;  // thread << 22 | epoch
};
constexpr int kEpochBits = 22;

// The reads of an element within the launch (few: only workspaces are read
// where they are written, by a later launch).
struct Reads {
  uint32_t block = 0, epoch = 0;  // the last reader's
  uint32_t thread = 0;
  bool several_threads = false;  // of that block and epoch
  bool several_blocks = false;
};

struct Region {
  std::string name;
  uintptr_t lo = 0, hi = 0;
  uintptr_t alloc_lo = 0, alloc_hi = 0;  // the storage that holds it
  bool writable = false, workspace = false;
  std::vector<uint8_t> written;  // writable regions only
  int64_t elem = 1;  // bytes per element: the unit of the race check
  std::vector<LastWrite> last_write;  // per element, this launch; writable only
  bool touched = false;  // last_write holds something of this launch
};
std::vector<Region> g_regions;
int g_sessions = 0;
// (region, element) -> its reads in this launch
std::unordered_map<uint64_t, Reads> g_reads;

// ---- execution state of the block being run --------------------------------

enum class State { Ready, WaitWarp, WaitBlock, Done, Failed };

struct Thread {
  ThreadIndex index;
  void* sp = nullptr;
  State state = State::Ready;
  int linear = 0, warp = 0, lane = 0;
  std::string waits_at;  // for a deadlock report
  std::unordered_map<uintptr_t, uint64_t> site_count;  // request grouping
  int64_t ops = 0;  // counted operations in the current barrier interval
};

struct Pending {
  WarpOp op;
  unsigned mask = 0, arrived = 0;
  const char* file = "";
  int line = 0, width = 32;
  int args[32] = {};
  uint64_t vals[32] = {};
};

struct Warp {
  unsigned present = 0, exited = 0;
  std::vector<Pending> pending;
  uint64_t results[32] = {};
};

struct ByteShadow {
  int32_t w_tid = -1, w_epoch = -1, r_tid = -1, r_epoch = -1;
  bool r_multi = false, init = false;
};

struct SharedRegion {
  std::string name;
  uintptr_t lo = 0, hi = 0;
  std::vector<ByteShadow> shadow;
};

struct Request {
  unsigned lanes = 0;
  bool store = false;
  std::vector<std::pair<uintptr_t, uintptr_t>> spans;  // [begin, end) per lane access
  std::vector<uint64_t> sectors;
};

// Bytes covered by the union of the spans: lanes reading the same address
// (a broadcast) count once.
int64_t distinct_bytes(std::vector<std::pair<uintptr_t, uintptr_t>>& spans) {
  std::sort(spans.begin(), spans.end());
  int64_t n = 0;
  uintptr_t end = 0;
  for (const auto& [b, e] : spans) {
    if (e <= end) continue;
    n += static_cast<int64_t>(e - std::max(b, end));
    end = e;
  }
  return n;
}

struct Block {
  const std::string* kernel = nullptr;
  LaunchRecord* rec = nullptr;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  uint3 idx;
  uint32_t linear = 0;  // x + gx (y + gy z)
  dim3 bdim, gdim;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  int live = 0, exited = 0;
  int bar_arrived = 0, bar_line = 0, epoch = 0;
  const char* bar_file = "";
  std::vector<SharedRegion> shared;
  int64_t shared_bytes = 0;
  std::map<std::tuple<int, uintptr_t, uint64_t>, Request> requests;
  std::map<std::tuple<int, uintptr_t, uint64_t>, Request> shared_requests;
  std::string error;
};

// The sectors a launch touched (request counting only).
std::unordered_set<uint64_t> g_load_sectors, g_store_sectors;

thread_local Block* t_block = nullptr;
thread_local Thread* t_thread = nullptr;
thread_local void* t_sched = nullptr;
thread_local std::vector<FiberStack> t_stacks;

std::string fmt3(unsigned x, unsigned y, unsigned z) {
  std::ostringstream os;
  os << "(" << x << "," << y << "," << z << ")";
  return os.str();
}

std::string thread_name(const Block& b, int linear) {
  const unsigned x = linear % b.bdim.x, y = (linear / b.bdim.x) % b.bdim.y,
                 z = linear / (b.bdim.x * b.bdim.y);
  return fmt3(x, y, z);
}

std::string site(const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  std::ostringstream os;
  os << (base ? base + 1 : file) << ":" << line;
  return os.str();
}

std::string hex(unsigned m) {
  std::ostringstream os;
  os << "0x" << std::hex << m;
  return os.str();
}

// "0-15, 17" for a lane mask.
std::string lanes(unsigned m) {
  std::ostringstream os;
  bool first = true;
  for (int i = 0; i < 32;) {
    if (!(m >> i & 1)) {
      ++i;
      continue;
    }
    int j = i;
    while (j + 1 < 32 && (m >> (j + 1) & 1)) ++j;
    os << (first ? "" : ", ") << i;
    if (j > i) os << "-" << j;
    first = false;
    i = j + 1;
  }
  return os.str();
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::ShflXor: return "__shfl_xor_sync";
    case WarpOp::ShflDown: return "__shfl_down_sync";
    case WarpOp::ShflUp: return "__shfl_up_sync";
    case WarpOp::ShflIdx: return "__shfl_sync";
    case WarpOp::SyncWarp: return "__syncwarp";
  }
  return "?";
}

// Records the failure for the scheduler and leaves the fiber for good (its
// stack is simply reused: kernel code holds no resources).
[[noreturn]] void fail(const std::string& what) {
  Block* b = t_block;
  Thread* t = t_thread;
  if (!b || !t) TORCH_CHECK(false, "CUDA emulator: ", what);
  if (b->error.empty()) {
    b->error = "CUDA emulator: " + what + " [kernel " + *b->kernel + ", block " +
        fmt3(b->idx.x, b->idx.y, b->idx.z) + ", thread " + thread_name(*b, t->linear) + "]";
  }
  t->state = State::Failed;
  switch_context(&t->sp, t_sched);
  __builtin_unreachable();
}

void on_exit(Block& b, Thread& t) {
  if (b.bar_arrived > 0) {
    fail("barrier not reached by every thread: this thread exits while " +
         std::to_string(b.bar_arrived) + " thread(s) wait at __syncthreads (" +
         site(b.bar_file, b.bar_line) + ")");
  }
  Warp& w = b.warps[t.warp];
  for (const Pending& p : w.pending) {
    if (p.mask >> t.lane & 1) {
      fail("divergent " + std::string(op_name(p.op)) + ": lane " + std::to_string(t.lane) +
           " exits, but lanes " + lanes(p.arrived) + " wait for it at " +
           site(p.file, p.line) + " (mask " + hex(p.mask) + ")");
    }
  }
  w.exited |= 1u << t.lane;
  ++b.exited;
}

void fiber_entry() {
  Block* b = t_block;
  Thread* t = t_thread;
  std::string err;
  try {
    b->body(b->ctx);
  } catch (const std::exception& e) {
    err = e.what();
  } catch (...) {
    err = "unknown exception";
  }
  if (!err.empty()) fail("exception in kernel code: " + err);
  on_exit(*b, *t);
  t->state = State::Done;
  --b->live;
  switch_context(&t->sp, t_sched);
  __builtin_unreachable();
}

[[noreturn]] void deadlock(Block& b) {
  std::ostringstream os;
  os << "CUDA emulator: no thread can proceed: ";
  std::map<std::string, std::vector<int>> by_wait;
  for (const Thread& t : b.threads) {
    if (t.state == State::WaitWarp || t.state == State::WaitBlock) {
      by_wait[t.waits_at].push_back(t.linear);
    }
  }
  bool first = true;
  for (const auto& [where, ids] : by_wait) {
    os << (first ? "" : "; ") << ids.size() << " thread(s) from " << thread_name(b, ids.front())
       << " wait at " << where;
    first = false;
  }
  for (size_t w = 0; w < b.warps.size(); ++w) {
    for (const Pending& p : b.warps[w].pending) {
      os << "; warp " << w << " lanes " << lanes(p.mask & ~p.arrived) << " never reach "
         << op_name(p.op) << " (" << site(p.file, p.line) << ", mask " << hex(p.mask)
         << "): a divergent " << op_name(p.op);
    }
  }
  if (b.bar_arrived > 0) {
    os << "; barrier not reached by every thread: " << b.bar_arrived << " of "
       << b.threads.size() << " wait at __syncthreads (" << site(b.bar_file, b.bar_line) << ")";
  }
  os << " [kernel " << *b.kernel << ", block " << fmt3(b.idx.x, b.idx.y, b.idx.z) << "]";
  TORCH_CHECK(false, os.str());
}

// Shared-memory wavefronts of one warp-level request: 32 banks of 4-byte
// words serve one distinct word each per wavefront, and a wavefront carries
// at most 128 bytes; lanes reading the same word share it (a broadcast).
std::pair<int64_t, int64_t> wavefronts(std::vector<std::pair<uintptr_t, uintptr_t>>& spans) {
  std::vector<uintptr_t> words;
  for (const auto& [lo, hi] : spans) {
    for (uintptr_t w = lo / 4; w <= (hi - 1) / 4; ++w) words.push_back(w);
  }
  std::sort(words.begin(), words.end());
  words.erase(std::unique(words.begin(), words.end()), words.end());
  int per_bank[32] = {};
  int64_t worst = 0;
  for (uintptr_t w : words) worst = std::max<int64_t>(worst, ++per_bank[w % 32]);
  const int64_t ideal = std::max<int64_t>(1, (distinct_bytes(spans) + 127) / 128);
  return {std::max(worst, ideal), ideal};
}

void tally_requests(Block& b) {
  LaunchRecord& r = *b.rec;
  for (auto& [key, q] : b.requests) {
    std::sort(q.sectors.begin(), q.sectors.end());
    const int64_t n =
        std::unique(q.sectors.begin(), q.sectors.end()) - q.sectors.begin();
    (q.store ? r.store_requests : r.load_requests) += 1;
    (q.store ? r.store_sectors : r.load_sectors) += n;
    (q.store ? r.store_ideal_sectors : r.load_ideal_sectors) += (distinct_bytes(q.spans) + 31) / 32;
    r.lane_slots += 32;
    r.active_lanes += __builtin_popcount(q.lanes);
  }
  b.requests.clear();
  for (auto& [key, q] : b.shared_requests) {
    (q.store ? r.shared_store_requests : r.shared_load_requests) += 1;
    const auto [waves, ideal] = wavefronts(q.spans);
    r.shared_wavefronts += waves;
    r.shared_ideal_wavefronts += ideal;
  }
  b.shared_requests.clear();
}

// Closes a barrier interval: the SIMT efficiency of every warp and of the
// block over the operations its threads counted since the last barrier.
void tally_interval(Block& b) {
  LaunchRecord& r = *b.rec;
  int64_t block_max = 0, block_sum = 0;
  for (size_t w = 0; w < b.warps.size(); ++w) {
    int64_t mx = 0, sum = 0;
    for (size_t i = w * 32; i < std::min(b.threads.size(), (w + 1) * 32); ++i) {
      mx = std::max(mx, b.threads[i].ops);
      sum += b.threads[i].ops;
    }
    r.warp_op_slots += 32 * mx;
    r.warp_ops += sum;
    block_max = std::max(block_max, mx);
    block_sum += sum;
  }
  r.block_op_slots += static_cast<int64_t>(b.threads.size()) * block_max;
  r.block_ops += block_sum;
  for (Thread& t : b.threads) t.ops = 0;
}

void run_block(Block& b) {
  const int n = static_cast<int>(b.bdim.x * b.bdim.y * b.bdim.z);
  while (static_cast<int>(t_stacks.size()) < n) t_stacks.push_back(make_stack(kStackBytes));
  b.threads.resize(n);
  b.warps.assign((n + 31) / 32, Warp{});
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.linear = i, t.warp = i / 32, t.lane = i % 32;
    t.index.thread_idx = {static_cast<unsigned>(i % b.bdim.x),
                          static_cast<unsigned>((i / b.bdim.x) % b.bdim.y),
                          static_cast<unsigned>(i / (b.bdim.x * b.bdim.y))};
    t.index.block_idx = b.idx;
    t.index.block_dim = b.bdim;
    t.index.grid_dim = b.gdim;
    t.sp = prepare(t_stacks[i], &fiber_entry);
    b.warps[t.warp].present |= 1u << t.lane;
  }
  b.live = n;
  struct Reset {
    ~Reset() { t_block = nullptr, t_thread = nullptr; }
  } reset;
  t_block = &b;
  while (b.live > 0) {
    bool ran = false;
    for (Thread& t : b.threads) {
      if (t.state != State::Ready) continue;
      ran = true;
      t_thread = &t;
      switch_context(&t_sched, t.sp);
      t_thread = nullptr;
      if (!b.error.empty()) TORCH_CHECK(false, b.error);
    }
    if (!ran) deadlock(b);
  }
  tally_interval(b);
  tally_requests(b);
}

}  // namespace

// ---- what the kernels call (simt.h) ----------------------------------------

const ThreadIndex& current_index() {
  TORCH_CHECK(t_thread, "CUDA emulator: threadIdx/blockIdx read outside a kernel");
  return t_thread->index;
}

uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t bits, int arg, int width,
                       const char* file, int line, int instructions) {
  Block* b = t_block;
  Thread* t = t_thread;
  TORCH_CHECK(t, "CUDA emulator: ", op_name(op), " called outside a kernel");
  (op == WarpOp::SyncWarp ? b->rec->syncwarps : b->rec->shuffles) += instructions;
  t->ops += instructions;
  Warp& w = b->warps[t->warp];
  const unsigned me = 1u << t->lane;
  const std::string here = std::string(op_name(op)) + " (" + site(file, line) + ", mask " + hex(mask) + ")";
  if (!(mask & me)) fail(here + ": the mask does not name the calling lane " + std::to_string(t->lane));
  if (mask & ~w.present) {
    fail(here + ": the mask names lanes " + lanes(mask & ~w.present) +
         ", which this warp does not have (a block of " + std::to_string(b->threads.size()) + " threads)");
  }
  if (width < 1 || width > 32 || (width & (width - 1))) {
    fail(here + ": width " + std::to_string(width) + " is not a power of two up to 32");
  }
  size_t pi = w.pending.size();
  for (size_t i = 0; i < w.pending.size(); ++i) {
    if (w.pending[i].mask & me) pi = i;
  }
  if (pi < w.pending.size()) {
    const Pending& p = w.pending[pi];
    if (p.op != op || p.line != line || std::strcmp(p.file, file) != 0 || p.mask != mask ||
        p.width != width) {
      fail("divergent " + std::string(op_name(p.op)) + ": lane " + std::to_string(t->lane) +
           " reaches " + here + " while lanes " + lanes(p.arrived) + " wait at " +
           op_name(p.op) + " (" + site(p.file, p.line) + ", mask " + hex(p.mask) + ")");
    }
  } else {
    for (const Pending& q : w.pending) {
      if (q.mask & mask) {
        fail("divergent " + std::string(op_name(op)) + ": lane " + std::to_string(t->lane) +
             " reaches " + here + " while lanes " + lanes(q.arrived) + " wait at " +
             op_name(q.op) + " (" + site(q.file, q.line) + ", mask " + hex(q.mask) + ")");
      }
    }
    if (mask & w.exited) {
      fail("divergent " + std::string(op_name(op)) + ": " + here + " names lanes " +
           lanes(mask & w.exited) + ", which have exited");
    }
    Pending p;
    p.op = op, p.mask = mask, p.file = file, p.line = line, p.width = width;
    w.pending.push_back(p);
  }
  Pending& p = w.pending[pi];
  p.arrived |= me;
  p.vals[t->lane] = bits;
  p.args[t->lane] = arg;
  if (p.arrived != p.mask) {
    t->state = State::WaitWarp;
    t->waits_at = here;
    switch_context(&t->sp, t_sched);
    return w.results[t->lane];
  }
  // The last lane: every lane's result, then the others run again.
  for (int l = 0; l < 32; ++l) {
    if (!(p.mask >> l & 1)) continue;
    const int base = l & ~(p.width - 1), a = p.args[l];
    int src = l;
    switch (p.op) {
      case WarpOp::ShflXor: src = l ^ a; break;
      case WarpOp::ShflDown: src = l + a; break;
      case WarpOp::ShflUp: src = l - a; break;
      case WarpOp::ShflIdx: src = base + (a & (p.width - 1)); break;
      case WarpOp::SyncWarp: break;
    }
    if (src < base || src >= base + p.width) src = l;  // outside the segment: own value
    if (!(p.mask >> src & 1)) {
      fail(here + ": lane " + std::to_string(l) + " reads lane " + std::to_string(src) +
           ", which the mask does not name (an undefined value on the device)");
    }
    w.results[l] = p.vals[src];
    if (l != t->lane) b->threads[t->warp * 32 + l].state = State::Ready;
  }
  w.pending.erase(w.pending.begin() + static_cast<std::ptrdiff_t>(pi));
  return w.results[t->lane];
}

void sync_block(const char* file, int line) {
  Block* b = t_block;
  Thread* t = t_thread;
  TORCH_CHECK(t, "CUDA emulator: __syncthreads called outside a kernel");
  b->rec->barriers += 1;
  const std::string here = "__syncthreads (" + site(file, line) + ")";
  if (b->exited > 0) {
    fail("barrier not reached by every thread: " + here + " is reached after " +
         std::to_string(b->exited) + " thread(s) of the block exited without it");
  }
  if (b->bar_arrived == 0) {
    b->bar_file = file, b->bar_line = line;
  } else if (b->bar_line != line || std::strcmp(b->bar_file, file) != 0) {
    fail("barrier not reached by every thread: this thread reaches " + here + " while " +
         std::to_string(b->bar_arrived) + " thread(s) wait at __syncthreads (" +
         site(b->bar_file, b->bar_line) + ")");
  }
  if (++b->bar_arrived == static_cast<int>(b->threads.size())) {
    b->bar_arrived = 0;
    ++b->epoch;
    tally_interval(*b);
    for (Thread& o : b->threads) {
      if (o.state == State::WaitBlock) o.state = State::Ready;
    }
    return;
  }
  t->state = State::WaitBlock;
  t->waits_at = here;
  switch_context(&t->sp, t_sched);
}

void declare_shared(void* base, size_t bytes, const char* name) {
  Block* b = t_block;
  TORCH_CHECK(b, "CUDA emulator: shared memory declared outside a kernel");
  const auto lo = reinterpret_cast<uintptr_t>(base);
  for (const SharedRegion& a : b->shared) {
    if (a.lo == lo) return;
  }
  b->shared_bytes += static_cast<int64_t>(bytes);
  if (b->shared_bytes > device().shared_per_block) {
    fail("the block's static shared memory (" + std::to_string(b->shared_bytes) +
         " bytes with " + name + ") exceeds the device's limit of " +
         std::to_string(device().shared_per_block) + " bytes per block");
  }
  b->rec->shared_bytes = std::max(b->rec->shared_bytes, b->shared_bytes);
  SharedRegion a;
  a.name = name, a.lo = lo, a.hi = lo + bytes;
  a.shadow.resize(bytes);
  b->shared.push_back(std::move(a));
  std::memset(base, 0xff, bytes);  // stale data from another block reads as NaN
}

void check_shared(const void* p, size_t bytes, bool store) {
  Block* b = t_block;
  Thread* t = t_thread;
  TORCH_CHECK(t, "CUDA emulator: shared memory accessed outside a kernel");
  const auto a = reinterpret_cast<uintptr_t>(p);
  const char* what = store ? "store" : "load";
  SharedRegion* arr = nullptr;
  for (SharedRegion& s : b->shared) {
    if (a >= s.lo && a + bytes <= s.hi) arr = &s;
  }
  if (!arr) fail(std::string("out-of-bounds shared-memory ") + what + " of " + std::to_string(bytes) + " bytes");
  if (a % bytes) fail(std::string("misaligned ") + std::to_string(bytes) + "-byte shared-memory " + what);
  ++t->ops;
  if (count_requests) {
    const auto site_pc = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
    const uint64_t nth = t->site_count[site_pc]++;
    Request& q = b->shared_requests[{t->warp, site_pc, nth}];
    q.lanes |= 1u << t->lane;
    q.store = store;
    q.spans.emplace_back(a, a + bytes);
  }
  const std::string elem = arr->name + "[" + std::to_string((a - arr->lo) / bytes) + "]";
  const int32_t tid = t->linear, e = b->epoch;
  for (size_t i = 0; i < bytes; ++i) {
    ByteShadow& s = arr->shadow[a - arr->lo + i];
    if (store) {
      if (s.w_epoch == e && s.w_tid != tid) {
        fail("shared-memory race on " + elem + ": written here and by thread " +
             thread_name(*b, s.w_tid) + " with no __syncthreads between");
      }
      if (s.r_epoch == e && (s.r_tid != tid || s.r_multi)) {
        fail("shared-memory race on " + elem + ": written here after thread " +
             thread_name(*b, s.r_tid) + " read it, with no __syncthreads between");
      }
      s.w_tid = tid, s.w_epoch = e, s.init = true;
    } else {
      if (!s.init) fail("read of uninitialised shared memory " + elem + " (nothing in this block wrote it)");
      if (s.w_epoch == e && s.w_tid != tid) {
        fail("shared-memory race on " + elem + ": read here while thread " +
             thread_name(*b, s.w_tid) + " wrote it, with no __syncthreads between");
      }
      if (s.r_epoch != e) {
        s.r_tid = tid, s.r_epoch = e, s.r_multi = false;
      } else if (s.r_tid != tid) {
        s.r_multi = true;
      }
    }
  }
}

namespace {
std::string describe(uintptr_t a) {
  if (g_regions.empty()) return "no global memory is registered for this launch";
  const Region* best = nullptr;
  uintptr_t dist = ~uintptr_t(0);
  for (const Region& r : g_regions) {
    const uintptr_t d = a >= r.hi ? a - r.hi : (a < r.lo ? r.lo - a : 0);
    if (d < dist) dist = d, best = &r;
  }
  std::ostringstream os;
  if (a >= best->hi) {
    os << (a - best->hi) << " bytes past the end of " << best->name << " (" << (best->hi - best->lo) << " bytes)";
  } else if (a < best->lo) {
    os << (best->lo - a) << " bytes before the start of " << best->name;
  } else {
    os << "straddling the end of " << best->name << " (" << (best->hi - best->lo) << " bytes)";
  }
  return os.str();
}

std::string block_name(const Block& b, uint32_t linear) {
  return fmt3(linear % b.gdim.x, (linear / b.gdim.x) % b.gdim.y, linear / (b.gdim.x * b.gdim.y));
}

// The race check of global memory (the header comment says what it models).
void check_global_order(const Block& b, const Thread& t, Region& r, size_t ri, uintptr_t a,
                        size_t bytes, bool store) {
  if (b.epoch >= (1 << kEpochBits)) fail("more barriers in one block than the race check can tell apart");
  const uint32_t me_block = b.linear + 1, me = static_cast<uint32_t>(t.linear) << kEpochBits | b.epoch;
  const uint32_t epoch = static_cast<uint32_t>(b.epoch), tid = static_cast<uint32_t>(t.linear);
  if (r.last_write.empty()) r.last_write.resize((r.hi - r.lo + r.elem - 1) / r.elem);
  r.touched = true;
  const uint64_t e0 = (a - r.lo) / r.elem, e1 = (a + bytes - 1 - r.lo) / r.elem;
  for (uint64_t e = e0; e <= e1; ++e) {
    auto where = [&] {
      std::ostringstream os;
      os << r.name << "[" << e << "] (address 0x" << std::hex << (r.lo + e * r.elem) << std::dec
         << ")";
      return os.str();
    };
    auto who = [&](uint32_t block1, uint32_t thread) {
      return "thread " + thread_name(b, static_cast<int>(thread)) + " of block " +
          block_name(b, block1 - 1);
    };
    auto why = [&](uint32_t block1) {
      return block1 != me_block
          ? std::string(", another block of the same launch (CUDA does not order the blocks of a launch)")
          : std::string(", with no __syncthreads between");
    };
    LastWrite& w = r.last_write[e];
    if (w.block) {
      const uint32_t wt = w.thread_epoch >> kEpochBits, we = w.thread_epoch & ((1u << kEpochBits) - 1);
      const bool ordered = w.block == me_block && (wt == tid || we < epoch);
      if (!ordered) {
        fail("global-memory race on " + where() + ": " +
             (store ? "written here and by " : "read here, written by ") + who(w.block, wt) +
             why(w.block));
      }
    }
    const uint64_t key = static_cast<uint64_t>(ri) << 48 | e;
    if (store) {
      auto it = g_reads.find(key);
      if (it != g_reads.end()) {
        const Reads& rd = it->second;
        const bool ordered = !rd.several_blocks && rd.block == me_block &&
            (rd.epoch < epoch || (!rd.several_threads && rd.thread == tid));
        if (!ordered) {
          fail("global-memory race on " + where() + ": written here after " + who(rd.block, rd.thread) +
               (rd.several_threads || rd.several_blocks ? " and others" : "") + " read it" +
               why(rd.several_blocks ? 0 : rd.block));
        }
      }
      w.block = me_block, w.thread_epoch = me;
    } else {
      Reads& rd = g_reads[key];
      if (!rd.block) {
        rd.block = me_block, rd.epoch = epoch, rd.thread = tid;
      } else if (rd.block != me_block) {
        rd.several_blocks = true;
        rd.block = me_block, rd.epoch = epoch, rd.thread = tid;
      } else if (rd.epoch != epoch) {
        rd.epoch = epoch, rd.thread = tid, rd.several_threads = false;
      } else if (rd.thread != tid) {
        rd.several_threads = true;
      }
    }
  }
}
}  // namespace

void check_global(const void* p, size_t bytes, bool store) {
  Block* b = t_block;
  Thread* t = t_thread;
  TORCH_CHECK(t, "CUDA emulator: global memory accessed outside a kernel");
  const auto a = reinterpret_cast<uintptr_t>(p);
  const char* what = store ? "store" : "load";
  if (a % bytes) {
    fail(std::string("misaligned ") + std::to_string(bytes) + "-byte global " + what +
         " at an address " + std::to_string(a % bytes) + " bytes past a " +
         std::to_string(bytes) + "-byte boundary (the device faults)");
  }
  Region* r = nullptr;
  size_t ri = 0;
  for (; ri < g_regions.size(); ++ri) {
    Region& g = g_regions[ri];
    if (a >= g.lo && a + bytes <= g.hi) {
      r = &g;
      break;
    }
  }
  if (!r) fail(std::string("out-of-bounds global ") + what + " of " + std::to_string(bytes) + " bytes, " + describe(a));
  if (a < r->alloc_lo || a + bytes > r->alloc_hi) {
    std::ostringstream os;
    os << "out-of-bounds global " << what << " of " << bytes << " bytes, outside the storage of "
       << r->name << " (" << (r->alloc_hi - r->alloc_lo) << " bytes): ";
    if (a >= r->alloc_hi) {
      os << (a - r->alloc_hi) << " bytes past its end";
    } else if (a < r->alloc_lo) {
      os << (r->alloc_lo - a) << " bytes before its start";
    } else {
      os << "straddling its end";
    }
    os << ", though within the extent its kernel arguments describe (a stride the planner got wrong)";
    fail(os.str());
  }
  if (store) {
    if (!r->writable) fail("store to the read-only input " + r->name);
    std::memset(r->written.data() + (a - r->lo), 1, bytes);
  } else if (r->writable) {
    for (size_t i = 0; i < bytes; ++i) {
      if (!r->written[a - r->lo + i]) {
        fail("read of uninitialised global memory: " + r->name + " byte " +
             std::to_string(a - r->lo + i) + ", which no kernel wrote");
      }
    }
  }
  if (r->writable) check_global_order(*b, *t, *r, ri, a, bytes, store);
  LaunchRecord& rec = *b->rec;
  ++t->ops;
  (store ? rec.store_bytes : rec.load_bytes) += static_cast<int64_t>(bytes);
  if (count_requests) {
    const auto site_pc = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
    const uint64_t nth = t->site_count[site_pc]++;
    Request& q = b->requests[{t->warp, site_pc, nth}];
    q.lanes |= 1u << t->lane;
    q.store = store;
    q.spans.emplace_back(a, a + bytes);
    for (uintptr_t s = a / 32; s <= (a + bytes - 1) / 32; ++s) {
      q.sectors.push_back(s);
      (store ? g_store_sectors : g_load_sectors).insert(s);
    }
  }
}

void count_exp() {
  if (!t_block) return;
  ++t_block->rec->exps;
  if (t_thread) ++t_thread->ops;
}

void count_log() {
  if (!t_block) return;
  ++t_block->rec->logs;
  if (t_thread) ++t_thread->ops;
}

// ---- launches ----------------------------------------------------------------

int resident_blocks_of(const std::string& name, int threads) {
  const DeviceProps& d = device();
  const auto it = d.resident_blocks.find(name);
  if (it != d.resident_blocks.end()) return it->second;
  return std::max(1, std::min(d.max_blocks_per_sm, d.max_threads_per_sm / std::max(threads, 1)));
}

std::string kernel_name_from(const char* pretty) {
  std::string s(pretty);
  const auto at = s.find("Kernel = ");
  if (at == std::string::npos) return s;
  s = s.substr(at + 9);
  int depth = 0;
  size_t end = 0;
  for (; end < s.size(); ++end) {
    const char c = s[end];
    if (c == '<') ++depth;
    if (c == '>') --depth;
    if (depth == 0 && (c == ';' || c == ']')) break;
  }
  s = s.substr(0, end);
  if (!s.empty() && s[0] == '&') s = s.substr(1);
  for (const char* junk : {"iwae_fused::", "cuda::", "{anonymous}::", "(anonymous namespace)::", "c10::"}) {
    for (size_t p; (p = s.find(junk)) != std::string::npos;) s.erase(p, std::strlen(junk));
  }
  return s;
}

void run_grid(const std::string& name, dim3 grid, dim3 block, void (*body)(void*), void* ctx,
              std::vector<int64_t> int_args) {
  const DeviceProps& d = device();
  const int64_t g[3] = {grid.x, grid.y, grid.z}, k[3] = {block.x, block.y, block.z};
  const char* axis[3] = {"x", "y", "z"};
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(g[i] >= 1 && k[i] >= 1,
                "CUDA error: invalid configuration argument (emulated launch of ", name,
                ": a zero-sized grid or block, grid ", fmt3(grid.x, grid.y, grid.z), " block ",
                fmt3(block.x, block.y, block.z), ")");
    TORCH_CHECK(g[i] <= d.max_grid[i], "CUDA error: invalid configuration argument (emulated launch of ",
                name, ": grid.", axis[i], " = ", g[i], " exceeds the device's ", d.max_grid[i], ")");
    TORCH_CHECK(k[i] <= d.max_block[i], "CUDA error: invalid configuration argument (emulated launch of ",
                name, ": block.", axis[i], " = ", k[i], " exceeds the device's ", d.max_block[i], ")");
  }
  const int64_t threads = k[0] * k[1] * k[2];
  TORCH_CHECK(threads <= d.max_threads_per_block,
              "CUDA error: invalid configuration argument (emulated launch of ", name, ": ", threads,
              " threads per block exceed the device's ", d.max_threads_per_block, ")");
  auto& log = launch_log();
  log.emplace_back();
  LaunchRecord& rec = log.back();
  rec.kernel = name;
  for (int i = 0; i < 3; ++i) rec.grid[i] = g[i], rec.block[i] = k[i];
  rec.threads = threads * g[0] * g[1] * g[2];
  rec.warps = (threads + 31) / 32 * g[0] * g[1] * g[2];
  rec.int_args = std::move(int_args);
  if (plan_only) return;
  g_load_sectors.clear(), g_store_sectors.clear();
  ++counts()[name];
  // The race check's record is per launch: forgotten however the launch ends.
  struct Forget {
    ~Forget() {
      for (Region& r : g_regions) {
        if (r.touched) std::fill(r.last_write.begin(), r.last_write.end(), LastWrite{});
        r.touched = false;
      }
      g_reads.clear();
    }
  } forget;
  const int64_t n = g[0] * g[1] * g[2];
  std::vector<uint32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0u);
  Schedule& sch = schedule();
  const uint64_t number = sch.launches++;
  if (sch.order == BlockOrder::Reversed) {
    std::reverse(order.begin(), order.end());
    rec.block_order = "reversed";
  } else if (sch.order == BlockOrder::Shuffled) {
    std::seed_seq seq{static_cast<uint32_t>(sch.seed), static_cast<uint32_t>(sch.seed >> 32),
                      static_cast<uint32_t>(number), static_cast<uint32_t>(number >> 32)};
    std::mt19937_64 rng(seq);
    std::shuffle(order.begin(), order.end(), rng);
    rec.block_order = "shuffled";
  } else {
    rec.block_order = "xyz";
  }
  for (size_t i = 0; i < order.size(); ++i) {
    const uint32_t l = order[i];
    if (i < 8) rec.first_blocks.push_back(l);
    Block b;
    b.kernel = &rec.kernel, b.rec = &rec, b.body = body, b.ctx = ctx;
    b.idx = {l % grid.x, (l / grid.x) % grid.y, l / (grid.x * grid.y)};
    b.linear = l;
    b.bdim = block, b.gdim = grid;
    run_block(b);
  }
  rec.load_distinct_sectors = static_cast<int64_t>(g_load_sectors.size());
  rec.store_distinct_sectors = static_cast<int64_t>(g_store_sectors.size());
}

// ---- sessions: the global memory of one op ------------------------------------

Session::Session() {
  TORCH_CHECK(g_sessions == 0, "CUDA emulator: sessions do not nest");
  ++g_sessions;
  g_regions.clear();
}

Session::~Session() {
  g_regions.clear();
  --g_sessions;
}

namespace {
void add_region(const char* name, const void* base, int64_t bytes, bool writable, bool ws,
                int64_t elem) {
  if (bytes <= 0) return;
  TORCH_CHECK(base != nullptr, "CUDA emulator: illegal address: ", name,
              " is a null pointer (", bytes, " bytes expected)");
  const std::optional<Allocation> alloc = find_allocation(base);
  TORCH_CHECK(alloc.has_value(), "CUDA emulator: illegal address: ", name,
              " lies in no storage that the op was given or allocated");
  Region r;
  r.name = name, r.lo = reinterpret_cast<uintptr_t>(base), r.hi = r.lo + bytes;
  r.alloc_lo = alloc->lo, r.alloc_hi = alloc->hi;
  r.writable = writable, r.workspace = ws, r.elem = std::max<int64_t>(elem, 1);
  if (writable && !plan_only) r.written.assign(bytes, 0);  // nothing runs in plan-only mode
  g_regions.push_back(std::move(r));
}
}  // namespace

void Session::input(const char* name, const void* base, int64_t bytes) {
  add_region(name, base, bytes, false, false, 1);
}
void Session::output(const char* name, void* base, int64_t bytes, int64_t elem) {
  add_region(name, base, bytes, true, false, elem);
  // An element no kernel writes reads as NaN (within the storage: a region
  // wider than it is an error at the first access, not here; not in
  // plan-only mode, where no kernel runs and a full-size output stays
  // untouched).
  if (bytes > 0 && !plan_only && !g_regions.empty() &&
      g_regions.back().lo == reinterpret_cast<uintptr_t>(base)) {
    const Region& r = g_regions.back();
    std::memset(base, 0xff, std::min(r.hi, r.alloc_hi) - r.lo);
  }
}

void Session::check_outputs_written() const {
  if (plan_only) return;
  for (const Region& r : g_regions) {
    if (!r.writable || r.workspace) continue;
    const auto hole = std::find(r.written.begin(), r.written.end(), 0);
    TORCH_CHECK(hole == r.written.end(), "CUDA emulator: the kernels left ", r.name, " byte ",
                hole - r.written.begin(), " of ", r.written.size(), " unwritten");
  }
}

}  // namespace iwae_emu

// ---- the device interface of cuda/device_api.h -------------------------------

namespace iwae_fused::cuda::dev {

Limits limits() {
  const auto& d = iwae_emu::device();
  return {d.sm_count, d.max_grid[0], d.max_grid[1], d.max_grid[2]};
}

at::Tensor workspace(int64_t n, at::ScalarType dtype) {
  TORCH_CHECK(iwae_emu::g_sessions > 0, "CUDA emulator: a workspace outside an op");
  at::Tensor t = at::empty({n}, at::TensorOptions().dtype(dtype));
  iwae_emu::add_region("workspace", t.data_ptr(), static_cast<int64_t>(t.nbytes()), true, true,
                       static_cast<int64_t>(t.element_size()));
  if (!iwae_emu::plan_only) std::memset(t.data_ptr(), 0xff, t.nbytes());
  return t;
}

}  // namespace iwae_fused::cuda::dev
