"""Graph signatures of the export (GraphIO, :func:`mel_io`) and the formats table.

The table itself (:data:`FORMATS`, :class:`FormatSpec`) lives in the torch-free core,
:mod:`dymn_edge.formats`, so that file readers use it too; it is re-exported here for the
export side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dymn_edge.formats import FORMATS, Format, FormatSpec, Int8Variant, Precision, format_spec, iter_variants

__all__ = ["FORMATS", "Format", "FormatSpec", "GraphIO", "Int8Variant", "Precision", "format_spec",
           "iter_variants", "mel_io"]


@dataclass(frozen=True)
class GraphIO:
    """The signature an export graph is traced with: names, example shape, free length axis.

    One description for the log-mel graph (:func:`mel_io`) and the waveform graph
    (``dymn_edge.export.waveform.waveform_io``), so both writers and the export-time checks
    serve either.
    """

    input_name: str
    output_names: tuple[str, str]
    example_shape: tuple[int, ...]  # batch 1, the export window
    length_axis: int  # the axis a dynamic-time file leaves free
    length_name: str  # its symbolic name
    length_min: int
    length_max: int
    probe_step: int  # graph rewrites are checked at the window and at window + this (no stride multiple)
    probe_scale: float = 1.0  # standard deviation of the random probe input

    def probe(self, length: int, seed: int = 0) -> np.ndarray:
        """A seeded random input of ``length`` along the free axis (NumPy, float32)."""
        shape = list(self.example_shape)
        shape[self.length_axis] = length
        return (self.probe_scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)

    @property
    def length(self) -> int:
        return self.example_shape[self.length_axis]


def mel_io(frames: int, n_mels: int = 128) -> GraphIO:
    """Log-mel in: ``mel`` (B, 1, n_mels, T); out ``logits`` (B, C), ``embedding`` (B, E)."""
    return GraphIO("mel", ("logits", "embedding"), (1, 1, n_mels, frames), 3, "frames", 32, 100_000, 37)
