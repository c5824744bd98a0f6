"""Applications built on :mod:`core`, one sub-package per app (``apps/<name>/``).

Each app owns its data, model, entry points (``python -m apps.<name> fit --config ...``) and, optionally,
a ``tour.py`` that registers its quick-mode run with :func:`core.tour.register_tour`. No app imports
another app.
"""
