"""``create_model``: one factory from a registry name (and optional weights) to a module."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from dymn_edge.errors import WeightsError, one_line
from dymn_edge.registry import Arch, ModelSpec, get_spec
from dymn_edge.weights import resolve_weights

log = logging.getLogger(__name__)

HEAD_KEYS = ("classifier.5.weight", "classifier.5.bias")


def build_model(spec: ModelSpec, num_classes: int | None = None, **kwargs) -> nn.Module:
    """The architecture of ``spec`` with fresh (untrained) weights."""
    from dymn_edge.models.dymn import DyMN  # noqa: PLC0415
    from dymn_edge.models.mn import MN  # noqa: PLC0415

    classes = spec.num_classes if num_classes is None else num_classes
    if spec.arch is Arch.MN:
        return MN(spec.width, classes)
    return DyMN(spec.width, classes, replace_se=spec.arch is Arch.DYMN_REPLACE_SE, **kwargs)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict (plain dict, or wrapped under 'state_dict' / 'model')."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({one_line(exc, 160)})") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: checkpoint does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def num_classes_in(state_dict: dict[str, torch.Tensor]) -> int:
    if HEAD_KEYS[0] not in state_dict:
        raise WeightsError("checkpoint has no classifier.5 layer: not an EfficientAT MN/DyMN state dict")
    return int(state_dict[HEAD_KEYS[0]].shape[0])


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Strict load; a head of another class count is skipped (and said so in the log)."""
    own = model.state_dict()
    sd = dict(state_dict)
    if HEAD_KEYS[0] in sd and sd[HEAD_KEYS[0]].shape != own[HEAD_KEYS[0]].shape:
        log.warning("%s: classifier has %d classes, model %d: loading everything but the last layer",
                    source, sd[HEAD_KEYS[0]].shape[0], own[HEAD_KEYS[0]].shape[0])
        for k in HEAD_KEYS:
            sd[k] = own[k]
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3])[:300]
        raise WeightsError(f"{source}: weights do not fit this architecture ({detail})") from exc


def create_model(name: str, *, weights: str | Path | None = None, pretrained: bool = True,
                 num_classes: int | None = None, temperature: float = 1.0,
                 allow_download: bool = True, seed: int = 0) -> nn.Module:
    """Build a registered model in eval mode.

    ``pretrained=False`` gives a seeded, untrained structural model (``model.untrained`` is
    True) and never touches the network. Otherwise the weights come from ``weights``, the
    cache, or the release URL; their class count wins unless ``num_classes`` is given.
    DyMN runs with Dy-Conv temperature ``temperature`` (1 for every released checkpoint).
    """
    spec = get_spec(name)
    kwargs = {} if spec.arch is Arch.MN else {"temperature": temperature}
    if not pretrained:
        if weights is not None:
            raise WeightsError("pass either weights or pretrained=False (random init), not both")
        torch.manual_seed(seed)
        model = build_model(spec, num_classes, **kwargs)
        model.untrained = True
        model.weights_path = None
        log.warning("%s: random-init structural model (seed %d): UNTRAINED, outputs are meaningless",
                    spec.name, seed)
        return model.eval()
    path = resolve_weights(spec, weights, allow_download=allow_download)
    sd = read_state_dict(path)
    classes = num_classes if num_classes is not None else num_classes_in(sd)
    model = build_model(spec, classes, **kwargs)
    load_weights(model, sd, source=str(path))
    model.untrained = False
    model.weights_path = Path(path)
    return model.eval()
