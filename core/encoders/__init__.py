"""Generic encoders and projection heads shared by several apps.

- :class:`SmallCNN` — a three-block CNN for small images (8x8 to ~32x32).
- :class:`MLPEncoder` — an MLP for vector inputs.
- :class:`ProjectionHead` — SimCLR's MLP head between the representation and the contrastive loss.
"""

from core.encoders.cnn import SmallCNN
from core.encoders.mlp import MLPEncoder, ProjectionHead

__all__ = ["SmallCNN", "MLPEncoder", "ProjectionHead"]
