"""Sphinx configuration for robustfit's documentation.

Build with ``make docs`` (warnings are errors), or
``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

import robustfit

project = "robustfit"
author = "robustfit developers"
copyright = "robustfit developers"
version = release = robustfit.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_nb",
]
# No sphinx.ext.intersphinx: the build must work without a network connection, so references to
# other projects' objects (torch, scikit-learn, skorch) render as plain names.

templates_path = ["_templates"]
exclude_patterns = ["_build", "generated/*.examples"]

# Tutorials: myst-nb renders the executed copies in docs/notebooks/ (made by
# docs/execute_notebooks.py, ``make notebooks``) with their saved outputs and plots. The build
# executes nothing, so it stays fast and needs no kernel.
nb_execution_mode = "off"
default_role = "code"

# API pages: one page per public name, generated into docs/generated/ (not committed).
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_member_order = "bysource"
autodoc_typehints = "none"
# Document only what robustfit itself writes: an override without a docstring (get_params,
# infer, ...) would otherwise show the docstring of skorch's or scikit-learn's method.
autodoc_inherit_docstrings = False

# numpydoc renders the docstrings' sections; member tables come from autodoc, without the members
# AdversarialClassifier inherits from skorch.
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False

html_theme = "alabaster"
html_theme_options = {
    "description": "Adversarially robust neural networks through the scikit-learn API",
    "fixed_sidebar": True,
}
html_title = f"robustfit {release}"


def _skip_metadata_request_setters(app, what, name, obj, skip, options):
    # scikit-learn attaches generated ``set_{method}_request`` methods (metadata routing) to every
    # estimator class; their docstrings refer to scikit-learn's own glossary and labels.
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_request_setters)
