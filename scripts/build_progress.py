"""Reads a build log as it grows (stdin) and prints ninja's progress as one
short line per compiled file: "[3/27] cpu/kernels_avx512.cpp (1:42)".

scripts/run.sh pipes `pip install -v` through this, so a build of several
minutes shows where it is without pip's wall of compiler command lines."""

import re
import sys
import time

NINJA = re.compile(r"^\s*\[(\d+)/(\d+)\]")
SOURCE = re.compile(r"\s(\S+\.(?:cpp|cu|cc|c))(?:\s|$)")


def main():
    t0 = time.time()
    for line in sys.stdin:
        m = NINJA.match(line)
        if m:
            done, total = m.groups()
            sources = SOURCE.findall(line)
            name = sources[-1].split("csrc/")[-1] if sources else "linking"
            spent = int(time.time() - t0)
            print(f"  [{done}/{total}] {name}  ({spent // 60}:{spent % 60:02d})", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
