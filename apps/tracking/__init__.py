"""HEP particle tracking on TrackML-format events (HyperTrack-style, Mieskolainen 2023; Exa.TrkX-style graph).

Pipeline: hit features -> contrastive hit embedding (SupCon with particle-id labels on :mod:`core.losses`'
engine) -> kNN graph in that space (faiss) -> torch-geometric GNN edge classifier trained with a focal loss and
HyperTrack's per-particle edge contrastive loss -> track building (best-neighbour chaining; cut + connected
components as the baseline) -> the official TrackML score, against a DBSCAN baseline. A helix simulator writes
TrackML-format training events on the real TrackML geometry. Entry point (the core app runner):
``python -m apps.tracking {fit,evaluate,run,sweep,simulate,scale} --help``.
"""
