"""What the documentation promises outside its Python blocks (those are run by
scripts/build_docs.sh with pytest-markdown-docs): the distributed example
under torchrun, and user-facing text free of development-log references."""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import iwae_fused

ROOT = Path(__file__).resolve().parents[1]


def test_distributed_example_under_torchrun_with_gloo():
    # The docs' command, two processes on loopback (--standalone: a free port,
    # so parallel runs do not collide). The script asserts that every rank
    # returns the same estimate.
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun (installed with torch) not found"
    # The package the suite imports, also where it is built in place and not
    # installed (scripts/check_torch_versions.sh): a script's own folder, not
    # the working directory, starts its sys.path.
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(iwae_fused.__file__)))
    path = os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=path)
    run = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "examples/distributed_eval.py",
         "--samples", "2000", "--chunk-size", "300"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"2 processes, K = 2000: mean log-likelihood -?\d+\.\d+ nats", run.stdout), run.stdout


# Words that belong to the development record (benchmarks/NOTES.md, commit
# messages), not to text a user reads.
DEV_LOG = re.compile(
    r"\bissues?\b|\bissue[- ]\d+|\bsessions?\b|NOTES\.md (CPU|CUDA)|\bengineers?\b"
    r"|\bTODO\b|\bFIXME\b|\bTBD\b|FOR THE COORDINATOR",
    re.IGNORECASE,
)


def _strings(path):
    """(line, text) of every string constant of a Python file (docstrings,
    messages, help texts): what its users read. Comments are for
    contributors and are not checked."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for i, line in enumerate(node.value.splitlines()):
                yield node.lineno + i, line


def user_text():
    """(path, line number, line) of everything a user reads: the README, the
    docs' Markdown (MyST comment lines, '%', never reach a page), the files the
    docs include, the strings of the examples, the package and the scripts,
    and the messages the shell scripts print."""
    md = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
          *sorted((ROOT / "benchmarks").glob("RESULTS*.md")),
          *sorted((ROOT / "benchmarks").glob("GPU-*.md")),
          *sorted((ROOT / "examples").rglob("*.md"))]
    for path in md:
        if "_build" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if path.parent.name != "output" and line.lstrip().startswith("%"):
                continue
            yield path.relative_to(ROOT), n, line
    for path in [*sorted((ROOT / "examples").glob("*.py")), *sorted((ROOT / "iwae_fused").rglob("*.py")),
                 *sorted((ROOT / "scripts").glob("*.py"))]:
        for n, line in _strings(path):
            yield path.relative_to(ROOT), n, line
    for path in sorted((ROOT / "scripts").glob("*.sh")):  # the messages the scripts print
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(say|echo)\b", line):
                yield path.relative_to(ROOT), n, line


def test_user_text_has_no_development_log_references():
    hits = [f"{p}:{n}: {line.strip()}" for p, n, line in user_text() if DEV_LOG.search(line)]
    assert not hits, "development-log words in user-facing text:\n" + "\n".join(hits)


def test_the_word_check_fires():
    assert DEV_LOG.search("as measured in issue 13")
    assert DEV_LOG.search("(NOTES.md CPU 11)")
    assert DEV_LOG.search("re-measured in session 3")
    assert not DEV_LOG.search("the issued loads of a warp") and not DEV_LOG.search("tissue")


def test_docs_pages_are_all_in_the_toctree():
    # A page outside every toctree is built but unreachable (Sphinx warns,
    # and the docs build treats warnings as errors; this says which page).
    index = (ROOT / "docs" / "index.md").read_text()
    pages = {str(p.relative_to(ROOT / "docs").with_suffix(""))
             for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts}
    missing = [p for p in pages - {"index"} if f"\n{p}\n" not in index]
    assert not missing, missing


def test_examples_docs_and_requirements_ship_in_the_sdist(tmp_path):
    # setuptools' file list for the sdist (egg_info applies MANIFEST.in; no
    # build, no torch needed for it).
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    listed = set((tmp_path / "iwae_fused.egg-info" / "SOURCES.txt").read_text().split())
    wanted = [str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.py")]
    wanted += [str(p.relative_to(ROOT)) for p in (ROOT / "requirements").glob("*.txt")]
    wanted += ["docs/conf.py", "docs/index.md", "scripts/run.sh"]
    assert not [w for w in wanted if w not in listed], sorted(listed)
