"""Self-supervised speaker verification with margin contrastive losses (Lepage & Dehak, Interspeech 2023 and
arXiv 2404.14913).

Pipeline: two random 2-s crops of each unlabelled utterance, augmented with synthetic reverberation, noise and
babble (:mod:`apps.speaker.features`) -> thin ResNet-34 or small ECAPA-TDNN on log-mel filterbanks
(:mod:`apps.speaker.model`) -> NT-Xent / InfoNCE with additive (AM) or angular (AAM) positive margins, symmetric or
not (:func:`core.losses.nt_xent`, :func:`core.losses.info_nce`; optional MoCo queue from :mod:`core.negatives`) ->
cosine scoring of trials (optionally AS-norm) -> EER and normalised minDCF (:mod:`apps.speaker.metrics`), at full
length, on 3-s crops and optionally in added noise, against the MFCC (standardised on the scored items) and
untrained-encoder baselines. A validation split of the training speakers gives the EER learning curve and the
encoder kept (:class:`apps.speaker.train.ValidationCurve`).
Entry point: ``python -m apps.speaker {fit,evaluate,run,sweep,embed,prepare} --help``.
"""
