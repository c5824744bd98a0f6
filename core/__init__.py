"""Shared building blocks of the contrastive monorepo.

Sub-packages: ``losses`` (the loss family), ``negatives`` (execution modes: dense, tiled, distributed,
queue, gradient cache), ``encoders`` (generic encoders and projection heads), ``metrics`` (representation
diagnostics and evaluation helpers) and ``training`` (the Lightning glue apps reuse). ``core`` never
imports an app.
"""
