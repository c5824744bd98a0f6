"""Self-supervised speaker verification with margin contrastive losses (Lepage & Dehak, Interspeech 2023 and
arXiv 2404.14913).

Pipeline: two random 2-s crops of each unlabelled utterance, augmented with synthetic reverberation, noise and
babble (:mod:`apps.speaker.features`) -> thin ResNet-34 or small ECAPA-TDNN on log-mel filterbanks
(:mod:`apps.speaker.model`) -> NT-Xent / InfoNCE with additive (AM) or angular (AAM) positive margins, symmetric or
not (:func:`core.losses.nt_xent`, :func:`core.losses.info_nce`; optional MoCo queue from :mod:`core.negatives`) ->
cosine scoring of trials -> EER and normalised minDCF (:mod:`apps.speaker.metrics`) against the MFCC and
untrained-encoder baselines. Entry point: ``python -m apps.speaker {fit,evaluate,run,sweep,embed,prepare} --help``.
"""
