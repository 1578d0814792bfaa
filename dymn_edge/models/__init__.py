"""PyTorch models, faithful to the official EfficientAT checkpoints (imports torch)."""

from dymn_edge.models.dymn import DyMN
from dymn_edge.models.factory import create_model, load_weights, resolve_weights
from dymn_edge.models.mn import MN

__all__ = ["DyMN", "MN", "create_model", "load_weights", "resolve_weights"]
