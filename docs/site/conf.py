"""Sphinx configuration of the course website (``python -m dcl_teach.course site``).

Sphinx reads this file from the staged copy in ``build/site-src/pages/``, next to the pages
that ``dcl_teach.site.stage`` generates, so every path here is relative to that folder.
Notebooks are rendered with their committed outputs: nothing is executed.
"""

import dcl_teach
from dcl_teach.colab import REPO_URL

project = "dcl-teach"
author = "the dcl-teach authors"
copyright = "the dcl-teach authors, MIT licence"
release = version = dcl_teach.__version__

extensions = [
    "myst_nb",  # Markdown (MyST) pages and .ipynb notebooks
    "sphinx.ext.autodoc",  # the API reference from the docstrings
    "sphinx.ext.napoleon",  # Google-style Args/Returns/Raises/Example sections
    "sphinx.ext.mathjax",
]
root_doc = "index"
exclude_patterns = ["_static", "**/.ipynb_checkpoints"]

# --- notebooks: committed outputs only, no kernel, no CDN
nb_execution_mode = "off"
# The sliders need a running kernel; a static page cannot move them. No widget scripts are
# loaded (they would come from a CDN); dcl_teach.site puts a note in each widget's place.
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]

# --- maths: the MathJax 3 copy under _static/mathjax, never a CDN
mathjax_path = "mathjax/tex-chtml.js"
mathjax3_config = {
    "options": {"processHtmlClass": "tex2jax_process|mathjax_process|math|output_area"},
}

# --- API reference
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# An undocumented override (autograd.Function.forward) would show PyTorch's own docstring.
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# --- HTML
html_theme = "sphinx_book_theme"
html_title = "dcl-teach: from InfoNCE to Decoupled Contrastive Learning"
html_static_path = ["_static"]
html_copy_source = False
html_show_sourcelink = False
html_theme_options = {
    "repository_url": REPO_URL,
    "use_repository_button": False,
    "use_download_button": False,
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "navigation_with_keys": False,
}
html_last_updated_fmt = None
# The theme's light/dark switch starts from this mode (unset, its script logs an error).
html_context = {"default_mode": "light"}


def _display_math_with_tag(app, doctree):
    r"""Keep ``\tag`` working in multi-line display maths.

    Sphinx wraps a display equation that contains ``\\`` in ``\begin{split}``, where MathJax
    refuses ``\tag`` ("\tag not allowed in split environment"). Such an equation (notebook 06's
    learning-rate schedule, a ``cases``) is passed to MathJax whole, in ``\[ ... \]``.
    """
    from docutils import nodes

    for node in doctree.findall(nodes.math_block):
        text = node.astext()
        if r"\tag" in text and r"\\" in text and not node.get("nowrap"):
            node["nowrap"] = True
            node.children = [nodes.Text(rf"\[{text}\]")]


def setup(app):
    app.connect("doctree-read", _display_math_with_tag)
    # MathJax on every page, not only on those with equations: the sidebar's lesson titles
    # carry maths too (notebook 03's q_B).
    app.set_html_assets_policy("always")
