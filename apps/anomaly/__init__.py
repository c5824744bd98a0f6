"""One-class anomaly detection with the mean-shifted contrastive loss (Reiss & Hoshen, AAAI 2023).

Pipeline: NT-Xent pre-training on an unlabelled pool (:mod:`core.training`) -> MSC fine-tuning on the normal
training data around the fixed centre (:func:`core.losses.mean_shifted`) -> kNN scores (k = 2, squared L2 on
normalised features; :func:`core.metrics.knn.knn_scores`) -> ROC-AUC / average precision against the
baselines (kNN on pre-trained features, a compactness fine-tune, kNN and Isolation Forest on raw inputs).
Entry point: ``python -m apps.anomaly {pretrain,fit,evaluate,run,sweep} --help``
(on the core app runner, :mod:`core.app`).
"""
