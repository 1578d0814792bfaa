"""Waveform-in export graphs: the log-mel frontend inside the model file.

A ``--waveform`` file takes float32 mono audio at the frontend's sample rate and returns
class probabilities (the head's activation applied) and the embedding, so it runs in any
app (MediaPipe's AudioClassifier, a browser, a phone) with no frontend code next to it.

:class:`WaveformFrontend` is :class:`dymn_edge.frontend.LogMelFrontend` in torch ops, term
by term: pre-emphasis (one sample shorter), reflect padding as ``torch.stft(center=True)``
does, the symmetric 800-sample Hann centred in a 1024-point frame, power spectrum, Kaldi mel
banks, ``log(x + 1e-5)``, ``(x + 4.5) / 5``. Only the samples under the window's non-zero
support are read (798 of the 1024-sample frame, as in the NumPy frontend): the padding is
399 samples per side, not 512, and frame t starts at padded sample ``t * hop``.

STFT formulation (chosen by measurement, see ``STFT_FORMS``, ``DEFAULT_STFT`` and the
README): ``radix32``, a two-stage 32 x 32 DFT as matmuls (19 M MACs per second of audio,
against 83 M for ``dft_conv``, a strided Conv1d whose fixed weights are the windowed DFT
rows of the bins the mel banks use). Both are plain matmuls / convolutions that XNNPACK
takes in LiteRT and ONNX Runtime runs with its GEMM; ``torch.fft.rfft`` is kept selectable
for measurement (``stft="rfft"``; litert-torch cannot convert it).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from dymn_edge.export.formats import GraphIO
from dymn_edge.export.mediapipe_metadata import MediaPipeAudioInfo
from dymn_edge.frontend import kaldi_mel_banks, symmetric_hann
from dymn_edge.registry import FrontendConfig

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_STFT", "STFT_FORMS", "WaveformFrontend", "WaveformModel", "frontend_macs",
           "mediapipe_info", "waveform_io"]

#: STFT formulations (``DEFAULT_STFT`` is the one written; the others stay for measurement).
STFT_FORMS = ("dft_conv", "radix32", "rfft")


def _support(fc: FrontendConfig) -> tuple[int, np.ndarray]:
    """(first index of the window's non-zero part in the n_fft frame, the non-zero part)."""
    window = symmetric_hann(fc.win_length, fc.n_fft)
    nz = np.flatnonzero(window)
    return int(nz[0]), window[nz[0]:nz[-1] + 1]


def _used_bins(fc: FrontendConfig) -> tuple[np.ndarray, np.ndarray]:
    """(bins any mel band weighs, the (n_mels, bins) bank restricted to them), float64."""
    banks = kaldi_mel_banks(fc.n_mels, fc.n_fft, fc.sample_rate, fc.fmin, fc.fmax)
    used = np.flatnonzero(np.any(banks > 0.0, axis=0))
    return used, banks[:, used]


def frontend_macs(num_samples: int, fc: FrontendConfig = FrontendConfig(), stft: str = "radix32") -> int:
    """Multiply-accumulates of the in-graph frontend for one waveform of ``num_samples``.

    Per frame: ``dft_conv`` 798 taps x (cos, sin) x the 479 bins the mel banks weigh;
    ``radix32`` the window, a 32-point real DFT for each of 32 columns (64 x 32 x 32) and a
    32-point complex DFT with folded twiddles per first-stage bin (32 x 64 x 2 k2); ``rfft``
    a radix-2 FFT counted as ``2 n log2 n``. All add the power spectrum and the mel matmul,
    plus pre-emphasis and (dft_conv / radix32) the reflect padding's reversal matmuls.
    """
    frames = 1 + (num_samples - 1) // fc.hop_length
    used, _ = _used_bins(fc)
    first, win = _support(fc)
    pad = fc.n_fft // 2 - first
    if stft == "rfft":
        bins = fc.n_fft // 2 + 1
        per_frame = 2 * fc.n_fft * int(math.log2(fc.n_fft)) + 2 * bins + used.size * fc.n_mels
        return int(frames * per_frame + num_samples)
    if stft == "radix32":
        r = int(round(math.sqrt(fc.n_fft)))
        k2 = int(used.max()) // r + 1
        per_frame = fc.n_fft + 2 * r * r * r + r * 2 * r * 2 * k2 + 2 * r * k2 + r * k2 * fc.n_mels
    else:
        per_frame = win.size * 2 * used.size + 2 * used.size + used.size * fc.n_mels
    rev_a = next((a for a in range(int(math.isqrt(pad)), 0, -1) if pad % a == 0), 1)
    reversal = 2 * pad * (rev_a + pad // rev_a)  # both ends: R_a @ X @ R_b
    return int(frames * per_frame + num_samples + reversal)


def WaveformFrontend(fc: FrontendConfig = FrontendConfig(), stft: str = "dft_conv"):
    """The torch frontend module (see the module docstring; torch is imported now)."""
    from dymn_edge.export import waveform_torch  # noqa: PLC0415  (torch)

    return waveform_torch.WaveformFrontend(fc, stft)


def WaveformModel(model, fc: FrontendConfig, activation: str, stft: str = "dft_conv"):
    """``model`` (log-mel in, (logits, embedding) out) behind the in-graph frontend."""
    from dymn_edge.export import waveform_torch  # noqa: PLC0415  (torch)

    return waveform_torch.WaveformModel(model, fc, activation, stft)


# ---------------------------------------------------------------------------------------
# The exporter's side: the graph signature (the formats table's writers take it), the STFT
# form written, the MediaPipe metadata. Validation is the log-mel files' (export.validate).

INPUT_NAME = "waveform"
OUTPUT_NAMES = ("probabilities", "embedding")


def waveform_io(samples: int, fc: FrontendConfig) -> GraphIO:
    """Waveform in: ``waveform`` (B, N) float32; out ``probabilities``, ``embedding``.

    N is free in ONNX files (at least 32 frames' worth, the network's total stride); the
    rewrite checks probe 0.1-scaled noise at the window and 3 hops + 17 samples longer (no
    multiple of the hop).
    """
    return GraphIO(INPUT_NAME, OUTPUT_NAMES, (1, samples), 1, "samples", 32 * fc.hop_length + 1,
                   10_000_000, 3 * fc.hop_length + 17, 0.1)

#: The STFT form written by the exporter (measured: see the README, "Waveform in, tags out").
DEFAULT_STFT = "radix32"


def mediapipe_info(meta):
    """The MediaPipe metadata of a waveform TFLite file, from its dymn-edge metadata."""
    fc = meta.frontend_config
    labels = [str(d.get("display_name") or f"class_{d['index']}")
              for d in sorted(meta.labels, key=lambda d: int(d["index"]))]
    trained = "UNTRAINED random-init structural model, outputs meaningless" if meta.untrained else \
        f"weights {meta.weights_source}"
    audioset = meta.num_classes == 527 and any(d.get("mid") for d in meta.labels)
    return MediaPipeAudioInfo(
        name=f"{meta.model_name} (waveform in)",
        description=(f"{meta.arch.upper()} audio {meta.task} over {meta.num_classes} classes "
                     f"({trained}). Input: {meta.window_seconds:g} s of mono float32 audio at "
                     f"{fc.sample_rate} Hz; the log-mel frontend is in the graph. Outputs: "
                     f"class probabilities ({meta.output_activation}) and the embedding."),
        version=(f"dymn-edge {meta.tool_versions.get('dymn-edge', '?')}; weights sha256 "
                 f"{(meta.weights_sha256 or 'none')[:16]}"),
        license=("Code: MIT (dymn-edge, EfficientAT). Weights: the licence of their source "
                 f"({meta.weights_source}). "
                 + ("Class names: AudioSet ontology, Google, CC BY-SA 4.0." if audioset else "")).strip(),
        author="dymn-edge",
        sample_rate=int(fc.sample_rate), channels=1, labels=tuple(labels),
        input_name=INPUT_NAME, probabilities_name=OUTPUT_NAMES[0], embedding_name=OUTPUT_NAMES[1])
