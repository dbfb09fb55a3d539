"""Sphinx configuration of the svlab book: the notebooks with their stored outputs, offline."""

project = "svlab"
author = "the svlab authors"
copyright = "svlab authors, MIT licence"

extensions = ["myst_nb"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# The notebooks are never executed here: the pages show the outputs stored in them.
nb_execution_mode = "off"
# Plotly figure JSON becomes HTML drawn by the bundled plotly.js; widgets become a note.
nb_custom_formats = {".ipynb": ["svlab.course.read_book_notebook", {}, False]}
nb_ipywidgets_js = {}
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

html_theme = "sphinx_book_theme"
html_title = "svlab: memory-efficient speaker verification, hands on"
html_static_path = ["_static"]
html_js_files = ["plotly.min.js"]
# MathJax 2 from jupyter-server-mathjax, copied into _static by svlab.course.build_book.
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
myst_update_mathjax = False  # its MathJax 3/4 options would stop MathJax 2
mathjax2_config = {  # the package ships the STIX-Web fonts only
    "HTML-CSS": {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web",
                 "imageFont": None},
    "SVG": {"font": "STIX-Web"},
}
html_theme_options = {"show_toc_level": 2}
