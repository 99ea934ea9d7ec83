#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__)

// The System V callee-saved state (rbx, rbp, r12-r15, the SSE control word
// MXCSR and the x87 control word) on the old stack, the stack pointer into
// *save, then the same state popped from the new stack. Hidden: no other
// module sees the symbol.
extern "C" void iwae_emu_swap(void** save, void* to);
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl iwae_emu_swap\n"
    ".hidden iwae_emu_swap\n"
    ".type iwae_emu_swap,@function\n"
    "iwae_emu_swap:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $16, %rsp\n"
    "  stmxcsr 8(%rsp)\n"
    "  fnstcw (%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr 8(%rsp)\n"
    "  fldcw (%rsp)\n"
    "  addq $16, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size iwae_emu_swap, .-iwae_emu_swap\n");

namespace iwae_emu {

void switch_context(void** save, void* to) {
  iwae_emu_swap(save, to);
}

void* prepare(const FiberStack& stack, void (*entry)()) {
  // The frame iwae_emu_swap pops (control words, six registers), then
  // entry as its return address, then a null return address for entry. The
  // top is 16-byte aligned, so entry starts with rsp = 8 (mod 16), as after a
  // call.
  auto top = (reinterpret_cast<uintptr_t>(stack.base) + stack.size) & ~uintptr_t(15);
  auto* sp = reinterpret_cast<uint64_t*>(top) - 10;
  std::memset(sp, 0, 10 * sizeof(uint64_t));
  uint32_t mxcsr;
  uint16_t fcw;
  __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
  __asm__ volatile("fnstcw %0" : "=m"(fcw));
  std::memcpy(reinterpret_cast<char*>(sp) + 8, &mxcsr, sizeof(mxcsr));
  std::memcpy(sp, &fcw, sizeof(fcw));
  sp[8] = reinterpret_cast<uint64_t>(entry);
  sp[9] = 0;
  return sp;
}

}  // namespace iwae_emu

#else  // other architectures: ucontext (slower: a syscall per switch)

#include <ucontext.h>

#include <unordered_map>

namespace iwae_emu {

namespace {
struct Ctx {
  ucontext_t uc;
};
}  // namespace

void switch_context(void** save, void* to) {
  auto* mine = static_cast<Ctx*>(*save);
  if (!mine) *save = mine = new Ctx();  // the scheduler's, made once per slot
  swapcontext(&mine->uc, &static_cast<Ctx*>(to)->uc);
}

void* prepare(const FiberStack& stack, void (*entry)()) {
  thread_local std::unordered_map<char*, Ctx*> by_stack;
  Ctx*& c = by_stack[stack.base];
  if (!c) c = new Ctx();
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack.base;
  c->uc.uc_stack.ss_size = stack.size;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, entry, 0);
  return c;
}

}  // namespace iwae_emu

#endif

namespace iwae_emu {

FiberStack make_stack(size_t size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size = (size + page - 1) / page * page;
  void* mem = mmap(nullptr, size + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) throw std::runtime_error("CUDA emulator: cannot map a fiber stack");
  mprotect(mem, page, PROT_NONE);
  return {static_cast<char*>(mem) + page, size};
}

}  // namespace iwae_emu
