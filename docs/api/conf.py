"""Sphinx configuration of the API reference (numpydoc docstrings): sphinx-build -W -b html docs/api docs/api/_build."""

project = "conceptree"
extensions = ["sphinx.ext.autodoc", "numpydoc"]
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types and shapes
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
