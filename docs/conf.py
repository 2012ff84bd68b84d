"""Sphinx configuration for jaxdrop's documentation.

Build (from the repository root, with the ``docs`` extra installed):

    sphinx-build -W --keep-going -b html docs docs/_build/html
    sphinx-build -W --keep-going -b doctest docs docs/_build/doctest

The build never touches the network: intersphinx reads the small inventories shipped in
``docs/_inventories`` (see ``make_inventories.py`` there) instead of downloading ``objects.inv``.
"""

import importlib.metadata
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Document the checkout being built (Read the Docs installs it too; this keeps a plain
# `sphinx-build` in a source tree honest about which jaxdrop it describes).
sys.path.insert(0, str(ROOT))

project = "jaxdrop"
author = "The jaxdrop authors"
copyright = "2026, The jaxdrop authors"
release = importlib.metadata.version("jaxdrop")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "_inventories", "_templates", "Thumbs.db", ".DS_Store"]
# The Equinox page documents `jaxdrop.equinox`; a checkout without that module builds without it
# (the index lists the API pages by the glob `api/jaxdrop*`).
if not (ROOT / "jaxdrop" / "equinox.py").exists():
    exclude_patterns.append("api/jaxdrop.equinox.rst")

# Markdown: `{doctest}` fences, `$...$` maths, and headings as link targets.
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# API pages: one generated page per public name (docs/api/_autosummary, not committed).
autosummary_generate = True
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# `Attributes:` as :ivar: fields, so they do not clash with the dataclass fields autodoc sees.
napoleon_use_ivar = True

# Offline intersphinx: each entry maps a project's URL to an inventory file shipped here.
_INV = pathlib.Path(__file__).parent / "_inventories"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(_INV / "python.inv")),
    "numpy": ("https://numpy.org/doc/stable", str(_INV / "numpy.inv")),
    "jax": ("https://docs.jax.dev/en/latest", str(_INV / "jax.inv")),
    "flax": ("https://flax.readthedocs.io/en/latest", str(_INV / "flax.inv")),
    "optax": ("https://optax.readthedocs.io/en/latest", str(_INV / "optax.inv")),
    "equinox": ("https://docs.kidger.site/equinox", str(_INV / "equinox.inv")),
}
intersphinx_timeout = 1

# Doctests in Markdown pages, docstrings and `.. doctest::` blocks share this setup.
doctest_global_setup = """
import jax
import jax.numpy as jnp
import numpy as np
import jaxdrop
"""

html_theme = "sphinx_book_theme"
html_title = f"jaxdrop {release}"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
