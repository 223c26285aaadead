"""Stage helpers: the logic behind each research notebook, callable (and tested) without Jupyter."""
