// The storages an emulated op may touch: the storages of its tensor
// arguments and every allocation made while it runs (outputs, copies the
// planner makes, workspaces). A kernel argument is checked against these as
// well as against its own extent (runtime.h's Session): the extent comes
// from the very strides the kernel indexes with, so a stride bug in the
// planner (plan.cpp, ops_glue.h) widens the extent with the accesses; the
// storage a tensor owns does not move with it.
#pragma once

#include <cstdint>
#include <optional>

namespace iwae_emu {

struct Allocation {
  uintptr_t lo = 0, hi = 0;  // [lo, hi)
};

// The known storage holding byte p, if any.
std::optional<Allocation> find_allocation(const void* p);

// The extent of one op: while it lives, CPU allocations are recorded (a
// recording allocator stands in for the CPU allocator), and note() adds an
// argument's storage. Scopes nest (an op calling another); the outermost
// one's end forgets them all.
class OpMemory {
 public:
  OpMemory();
  ~OpMemory();
  void note(const void* base, int64_t bytes);
  OpMemory(const OpMemory&) = delete;
  OpMemory& operator=(const OpMemory&) = delete;
};

}  // namespace iwae_emu
