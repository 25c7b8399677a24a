"""Sphinx configuration: the Markdown pages of docs/ and the case READMEs, plus an API reference
generated from the library's docstrings (``make docs`` -> docs/_build/html)."""

project = "pdeinv"
author = "pdeinv developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax",
              "sphinx.ext.viewcode"]
myst_enable_extensions = ["dollarmath"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_numpy_docstring = True
html_theme = "alabaster"
suppress_warnings = ["myst.header", "myst.xref_missing"]
