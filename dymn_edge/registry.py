"""Named model specs (timm-style): architecture, width, release URL and frontend settings.

Torch-free: the registry is read by the exporter, the runtime and the benchmarks alike.
"""

from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass, field

from dymn_edge.errors import UnknownModelError

RELEASE_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"


class Arch(str, enum.Enum):
    """Network families of the paper."""

    DYMN = "dymn"  # every block dynamic
    DYMN_REPLACE_SE = "dymn_replace_se"  # dynamic blocks only where MobileNetV3 has SE
    MN = "mn"  # static MobileNetV3 baseline with squeeze-and-excitation


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel recipe of the EfficientAT checkpoints (see shared reference README)."""

    sample_rate: int = 32000
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = 15000.0
    preemphasis: float = 0.97
    log_offset: float = 1e-5
    norm_shift: float = 4.5
    norm_scale: float = 5.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "FrontendConfig":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class ModelSpec:
    """One named, released model."""

    name: str
    arch: Arch
    width: float
    num_classes: int = 527
    filename: str | None = None
    sha256: str | None = None  # not published upstream; verified only when set
    label_set: str = "audioset"
    published_mAP: float | None = None
    published_params_m: float | None = None
    published_gmacs: float | None = None
    aliases: tuple[str, ...] = ()
    frontend: FrontendConfig = field(default_factory=FrontendConfig)

    @property
    def url(self) -> str | None:
        return RELEASE_URL + self.filename if self.filename else None


_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("dymn-s", Arch.DYMN, 0.4, filename="dymn04_as.pt", published_mAP=45.0,
              published_params_m=1.97, published_gmacs=0.12, aliases=("dymn04_as",)),
    ModelSpec("dymn-m", Arch.DYMN, 1.0, filename="dymn10_as.pt", published_mAP=47.7,
              published_params_m=10.57, published_gmacs=0.58, aliases=("dymn10_as",)),
    ModelSpec("dymn-l", Arch.DYMN, 2.0, filename="dymn20_as.pt", published_mAP=49.1,
              published_params_m=40.02, published_gmacs=2.2, aliases=("dymn20_as",)),
    # The paper's ablation: dynamic blocks only where MobileNetV3 has squeeze-excitation.
    # No released weights: a user brings a checkpoint (--weights) or exports --random-init.
    ModelSpec("dymn-s-replace-se", Arch.DYMN_REPLACE_SE, 0.4),
    ModelSpec("dymn-m-replace-se", Arch.DYMN_REPLACE_SE, 1.0),
    ModelSpec("dymn-l-replace-se", Arch.DYMN_REPLACE_SE, 2.0),
    ModelSpec("mn-s", Arch.MN, 0.4, filename="mn04_as_mAP_432.pt", published_mAP=43.2,
              aliases=("mn04_as", "mn-04")),
    ModelSpec("mn-m", Arch.MN, 1.0, filename="mn10_as_mAP_471.pt", published_mAP=47.1,
              published_gmacs=0.54, aliases=("mn10_as", "mn-10")),
    # The other official MobileNetV3 widths: the accuracy / latency front (dymn-bench --front)
    # compares every DyMN with the whole static family. File names as EfficientAT releases them.
    ModelSpec("mn-05", Arch.MN, 0.5, filename="mn05_as_mAP_443.pt", published_mAP=44.3,
              aliases=("mn05_as",)),
    ModelSpec("mn-20", Arch.MN, 2.0, filename="mn20_as_mAP_478.pt", published_mAP=47.8,
              aliases=("mn20_as",)),
    ModelSpec("mn-30", Arch.MN, 3.0, filename="mn30_as_mAP_482.pt", published_mAP=48.2,
              aliases=("mn30_as",)),
    ModelSpec("mn-40", Arch.MN, 4.0, filename="mn40_as_mAP_484.pt", published_mAP=48.4,
              aliases=("mn40_as",)),
)


def _index() -> dict[str, ModelSpec]:
    out: dict[str, ModelSpec] = {}
    for spec in _SPECS:
        for key in (spec.name, *spec.aliases):
            out[key] = spec
    return out


def list_models() -> list[str]:
    """Canonical model names, in registry order."""
    return [s.name for s in _SPECS]


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name or alias; unknown names fail with a suggestion."""
    index = _index()
    key = name.strip().lower()
    if key in index:
        return index[key]
    close = difflib.get_close_matches(key, list(index), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UnknownModelError(
        f"unknown model '{name}'.{hint} Known models: {', '.join(list_models())}"
    )
