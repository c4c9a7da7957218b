"""Sphinx configuration of the metagan_jax documentation site.

Build it with ``make docs`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``).
The tutorials (MyST/jupytext Markdown in ``tutorials/``) are executed during the build;
``METAGAN_DOCS_EXECUTE`` picks myst-nb's execution mode: ``force`` (the default: every
notebook, every build), ``cache`` (re-run only notebooks whose code changed; the cache lives in
``docs/_build/.jupyter_cache``) or ``off`` (no execution: a quick build for the prose).
"""

from __future__ import annotations

import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)

# `metagan_jax` and `experiments` import from the repository root (autodoc, the results tables),
# and the extensions of this site from docs/_ext. The notebooks' kernels inherit PYTHONPATH.
for _path in (os.path.join(DOCS, "_ext"), ROOT):
  if _path not in sys.path:
    sys.path.insert(0, _path)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

import jax  # noqa: E402

import metagan_jax  # noqa: E402

# jax 0.10's Array class calls itself "jaxlib._jax.Array" (__qualname__), so the types that
# autodoc and napoleon print would read "jax.jaxlib._jax.Array". In this process only (the
# notebooks run in kernels of their own) it gets the name users write.
jax.Array.__name__ = jax.Array.__qualname__ = "Array"

project = "metagan_jax"
author = "The metagan_jax authors"
copyright = "The metagan_jax authors"
release = metagan_jax.__version__
version = release

extensions = [
  "myst_nb",  # MyST Markdown and executed MyST notebooks (includes myst-parser)
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.viewcode",
  "sphinx.ext.mathjax",
  "api_coverage",  # docs/_ext: re-export aliases, and a warning per public name without a page
  "results_tables",  # docs/_ext: {results-table} FILE, tables from experiments/results/*.json
  "voice_clips",  # docs/_ext: {voice-clips} FILE, audio players (support clips from ../shared)
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
root_doc = "index"
exclude_patterns = [
  "_build",
  "**.ipynb_checkpoints",
  "Thumbs.db",
  ".DS_Store",
]
templates_path = ["_templates"]
# No intersphinx: the build runs without internet (CI), so no inventory is downloaded. Without
# inventories every reference to jax, flax, optax or numpy would fail a nitpicky build; references
# into metagan_jax are checked by api_coverage instead (a warning for each one that leads nowhere).
nitpicky = False

# -- MyST ------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3  # `page.md#a-heading` links resolve to headings down to level 3

# -- myst-nb: execute the tutorials ------------------------------------------------------------
nb_execution_mode = os.environ.get("METAGAN_DOCS_EXECUTE", "force")
nb_execution_timeout = 240
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
# Each notebook runs in a fresh temporary folder: files a tutorial writes never land in docs/.
nb_execution_in_temp = True

# -- autodoc / autosummary / napoleon ---------------------------------------------------------
autosummary_generate = True
autosummary_ignore_module_all = False  # a module's members are its __all__
autosummary_imported_members = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
napoleon_use_rtype = False
add_module_names = False
python_display_short_literal_types = True
python_maximum_signature_line_length = 88

# -- HTML --------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "metagan_jax"
html_static_path: list[str] = []
html_theme_options = {
  "show_toc_level": 2,
  "navigation_with_keys": False,
}
