"""Sphinx configuration: Markdown pages (MyST), the API reference from the
docstrings (autodoc + napoleon), the Furo theme. Built with warnings as errors
by scripts/build_docs.sh; the pages' code blocks are run by the same script."""

project = "iwae_fused"
author = "The iwae_fused developers"
copyright = "the iwae_fused developers"

try:  # the installed build's version (its local tag names torch and CUDA)
    from importlib.metadata import version as _version

    release = _version("iwae_fused")
except Exception:  # noqa: BLE001  (a source tree without an install)
    release = "0.1.0"
version = release.split("+")[0]

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "README.md"]

# MyST: $...$ math, ::: fences, heading anchors for links between pages.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# The API reference: autodoc imports the installed package (the compiled
# extension included), so the signatures are the real ones.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # Attributes: sections as fields (no second object description of NamedTuple fields)

html_theme = "furo"
html_title = f"iwae_fused {version}"
html_static_path = []
html_show_sourcelink = False
html_copy_source = False  # the Markdown sources hold notes for maintainers (% comments)

nitpicky = False
