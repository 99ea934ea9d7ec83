// Huge pages for large outputs the kernels are about to write.
//
// A fresh 64 MB gradient is a new mmap on every call (glibc returns it to the
// OS when freed), and on the machines we measured, first-touch faults of its
// 16k 4 KB pages cost more than the kernel that writes it. Asking for
// transparent huge pages on the untouched buffer (the same madvise PyTorch
// applies to every large CPU tensor under THP_MEM_ALLOC_ENABLE=1, here only
// to our own outputs) makes that 32 faults instead. A no-op where THP is off
// or unsupported.
#pragma once

#include <cstddef>

namespace iwae_fused::cpu {

void advise_huge_pages(void* data, size_t bytes);

} // namespace iwae_fused::cpu
