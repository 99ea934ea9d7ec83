// The emulated device as the op glue and the Python controls see it: its
// properties, the global memory a kernel may touch, and the record of what
// each launch did. (The kernels' side is simt.h and launch.h.)
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace iwae_emu {

// An H100 (SXM) unless set otherwise: a smaller device reaches split-K and
// the grid loops with small shapes.
struct DeviceProps {
  std::string name = "emulated NVIDIA H100 (132 SMs)";
  int sm_count = 132;
  int max_threads_per_block = 1024;
  int64_t max_block[3] = {1024, 1024, 64};
  int64_t max_grid[3] = {2147483647, 65535, 65535};
  int64_t shared_per_block = 48 * 1024;  // static __shared__ limit
  int max_threads_per_sm = 2048, max_blocks_per_sm = 32;
  // Resident blocks per SM by kernel name, as the occupancy calculator gives
  // them for a real GPU from the compiler's registers and shared memory
  // (benchmarks/gpu_model.py sets them per modelled GPU); a kernel not named
  // here is limited by threads and blocks per SM alone.
  std::map<std::string, int> resident_blocks;
};
DeviceProps& device();

// The order in which the blocks of a launch run. CUDA promises none: a
// kernel whose result depends on it is wrong, and running the blocks in
// another order than x, y, z (reversed, or shuffled afresh for each launch
// from the seed and the launch's number) shows it.
enum class BlockOrder { Xyz, Reversed, Shuffled };
struct Schedule {
  BlockOrder order = BlockOrder::Xyz;
  uint64_t seed = 0;
  uint64_t launches = 0;  // since the order was set: the shuffle of launch n is (seed, n)
};
Schedule& schedule();

// Global memory a kernel may touch: each op registers the extents of its
// operands (from the kernel-argument contract of kernel_args.h), each of
// which must also lie in a storage the op owns (allocations.h): an access
// is checked against both. Inputs are read-only; outputs and workspaces
// (cuda/device_api.h) are write-first: a read of a byte nothing wrote is an
// error (initcheck), and a byte no kernel wrote by the end of the op is one
// too. Within a launch, an output element written by one thread and read
// or written by another without an order CUDA guarantees (another block, or
// the same block with no __syncthreads between) is a race; `elem` is the
// element size, the unit of that check.
class Session {
 public:
  Session();
  ~Session();
  void input(const char* name, const void* base, int64_t bytes);
  void output(const char* name, void* base, int64_t bytes, int64_t elem);
  // Every output byte written? Throws naming the output and the first hole.
  void check_outputs_written() const;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
};

// Per launch: the configuration and what its threads did. A request is one
// warp-level access instruction (the lanes of a warp at the same dynamic
// access); sectors are the distinct 32-byte segments it touched.
struct LaunchRecord {
  std::string kernel;
  int64_t grid[3], block[3];
  int64_t shared_bytes = 0;
  int64_t threads = 0, warps = 0;
  int64_t load_requests = 0, store_requests = 0;
  int64_t load_bytes = 0, store_bytes = 0;  // bytes the lanes asked for
  int64_t load_sectors = 0, store_sectors = 0;
  // The fewest sectors the same bytes could take: ceil(request bytes / 32)
  int64_t load_ideal_sectors = 0, store_ideal_sectors = 0;
  // Distinct sectors over the launch: the traffic with a perfect cache (each
  // sector from DRAM once), the counterpart of a profiler's DRAM bytes.
  int64_t load_distinct_sectors = 0, store_distinct_sectors = 0;
  int64_t lane_slots = 0, active_lanes = 0;  // 32 per request, and those in it
  // SIMT efficiency over every barrier interval (and the stretch after the
  // last one): per warp, the lanes' counted operations (memory accesses,
  // shuffles, exponentials, logarithms) summed, against 32 x the busiest
  // lane's, the instructions the warp issues in lockstep; per block, the
  // same against every thread of the block (threads that have nothing to do
  // in an interval, as in a tile's serial reduction, count as idle there).
  int64_t warp_op_slots = 0, warp_ops = 0;
  int64_t block_op_slots = 0, block_ops = 0;
  // Shuffles in SHFL instructions (a 64-bit value takes two), per thread,
  // summed; barriers and __syncwarps per thread, summed.
  int64_t shuffles = 0, syncwarps = 0, barriers = 0;
  int64_t exps = 0, logs = 0;  // per thread, summed
  // Shared memory, per warp-level request (request counting only): the
  // wavefronts (bank-conflict passes) it takes, and the fewest its bytes
  // could take (128 bytes per wavefront).
  int64_t shared_load_requests = 0, shared_store_requests = 0;
  int64_t shared_wavefronts = 0, shared_ideal_wavefronts = 0;
  // The launch's integer arguments in order (chunk sizes, pieces, run
  // lengths): what the planner decided beside grid and block.
  std::vector<int64_t> int_args;
  std::string block_order;  // "xyz", "reversed" or "shuffled"
  std::vector<int64_t> first_blocks;  // linear indices of the first blocks run, in order
};
std::vector<LaunchRecord>& launch_log();

// Every kernel instantiation the host code can launch: each instantiation of
// the launch template (launch.h) registers its kernel when the module loads,
// so the list comes from the dispatch code itself.
const std::vector<std::string>& instantiations();
bool register_instantiation(const std::string& kernel);
// Launches per kernel since the module loaded (clear_launches keeps them).
const std::map<std::string, int64_t>& launch_counts();

// Request-level counting (sectors, lanes) costs memory per block; off unless
// asked for.
extern bool count_requests;

// Plan only: every launch is checked against the device's limits and
// recorded, but no block runs, and no output or workspace byte is touched
// (so full-size shapes cost only their unused allocations). For the launch
// plan of any shape without executing it (benchmarks/gpu_model.py).
extern bool plan_only;

}  // namespace iwae_emu
