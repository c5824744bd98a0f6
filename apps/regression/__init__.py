"""Deep imbalanced regression (DIR protocol of Yang et al. 2021) with ConR and SupReMix from ``core.losses``.

Modules: :mod:`~apps.regression.config` (settings, method presets), :mod:`~apps.regression.data` (tables,
embedded defaults, DIR split), :mod:`~apps.regression.dir` (bins, shot groups, LDS, FDS),
:mod:`~apps.regression.metrics`, :mod:`~apps.regression.model`, :mod:`~apps.regression.train` (``fit``),
:mod:`~apps.regression.evaluate`, :mod:`~apps.regression.prepare` (downloaded releases -> the app's format),
:mod:`~apps.regression.tour`; ``python -m apps.regression --help`` for the command line (the core app runner).
"""
