"""Representation diagnostics and shared evaluation helpers.

- :func:`alignment`, :func:`uniformity` — Wang & Isola (ICML 2020).
- :func:`effective_rank` — Roy & Vetterli (EUSIPCO 2007).
- :func:`linear_probe_accuracy`, :func:`few_shot_probe_accuracy` — logistic-regression probes on frozen
  features (all labels / a few labels per class).
- :func:`knn_scores` — kNN anomaly score (sum of squared distances to the k nearest bank points; Bergman et
  al. 2020, PANDA, MSC).
"""

from core.metrics.knn import knn_scores
from core.metrics.probe import few_shot_probe_accuracy, linear_probe_accuracy
from core.metrics.representation import alignment, effective_rank, uniformity

__all__ = ["alignment", "uniformity", "effective_rank", "linear_probe_accuracy", "few_shot_probe_accuracy",
           "knn_scores"]
