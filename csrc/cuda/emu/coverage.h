// Included first by the translation units that compile the CUDA source for
// the emulator. In the coverage build (setup.py, IWAE_FUSED_EMU_COVERAGE=1)
// every function defined after this point is compiled unoptimised, so that
// gcov's lines and branches are the source's own (an optimised build merges
// and drops them); the emulator's runtime, in other units, keeps -O2.
#pragma once

#if defined(IWAE_EMU_COVERAGE)
#pragma GCC optimize("O0")
#endif
