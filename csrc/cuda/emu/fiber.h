// Cooperative contexts for the emulated CUDA threads of one block.
//
// Why fibers and not OS threads: a block's threads must all be suspended at
// a __syncthreads or a warp shuffle until their partners arrive. With
// fibers on one host thread the emulator decides who runs next, so a missing
// partner is seen at once as "nobody can run" (an error naming who waits
// where) instead of a hang or a timeout, every run is deterministic, and a
// switch costs a few nanoseconds (no syscall, unlike swapcontext's signal
// mask), which matters with 32 switches per shuffle.
#pragma once

#include <cstddef>

namespace iwae_emu {

struct FiberStack {
  char* base = nullptr;  // lowest usable byte; a guard page lies below it
  size_t size = 0;
};

// A stack of `size` bytes with an inaccessible guard page under it, so an
// overflow faults instead of corrupting a neighbour.
FiberStack make_stack(size_t size);

// Saves the running context into *save and resumes `to` (a context saved by
// an earlier switch, or one prepared by prepare()).
void switch_context(void** save, void* to);

// A context that, when first switched to, calls entry() on `stack`. entry
// must never return (it switches away for good when done).
void* prepare(const FiberStack& stack, void (*entry)());

}  // namespace iwae_emu
