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

STFT formulation (chosen by measurement, see ``STFT_FORMS`` and the README): a strided
Conv1d whose fixed weights are the windowed DFT rows of the bins the mel banks use. It is
a plain convolution, so XNNPACK takes it in LiteRT and ONNX Runtime runs it with its GEMM;
the alternative, ``torch.fft.rfft``, is kept selectable for measurement (``stft="rfft"``).
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np

from dymn_edge.frontend import kaldi_mel_banks, symmetric_hann
from dymn_edge.registry import FrontendConfig

log = logging.getLogger(__name__)

__all__ = ["STFT_FORMS", "WaveformFrontend", "WaveformModel", "frontend_macs",
           "waveform_samples"]

#: STFT formulations: ``dft_conv`` (default, measured fastest in both engines) and ``rfft``.
STFT_FORMS = ("dft_conv", "radix32", "rfft")


def waveform_samples(frames: int, fc: FrontendConfig, window_seconds: float | None = None) -> int:
    """Input samples of a fixed-length waveform file whose log-mel has ``frames`` frames.

    The same rule as the tagger's window for a fixed-shape log-mel file: the window's own
    sample count when it gives exactly ``frames`` frames, else the longest length that
    does, so a waveform file and a log-mel file of the same window see the same audio.
    """
    lo = (frames - 1) * fc.hop_length + 1  # 1 + (n - 1) // hop == frames for n in [lo, lo + hop)
    n = max(lo, int(round(window_seconds * fc.sample_rate))) if window_seconds else lo
    return min(n, lo + fc.hop_length - 1)


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


@functools.lru_cache(maxsize=1)
def _torch_module_classes():
    """Build the torch modules on first use: torch is imported lazily (export only)."""
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    class _WaveformFrontend(nn.Module):
        """(B, N) float32 waveform -> (B, 1, n_mels, 1 + (N - 1) // hop) log-mel."""

        def __init__(self, fc: FrontendConfig = FrontendConfig(), stft: str = "dft_conv") -> None:
            super().__init__()
            if stft not in STFT_FORMS:
                raise ValueError(f"unknown STFT form '{stft}' (choose from: {', '.join(STFT_FORMS)})")
            self.fc, self.stft = fc, stft
            first, win = _support(fc)
            self.span = win.size
            # the first frame's support starts this far before pre-emphasised sample 0
            self.pad = fc.n_fft // 2 - first
            used, bank = _used_bins(fc)
            self.register_buffer("mel_bank", torch.from_numpy(bank.astype(np.float32)))  # (M, K)
            # reflect padding as products with reversal matrices: exact in float32 (one 1.0 per
            # column), and matmuls that XNNPACK takes, where the converter turns
            # F.pad(mode="reflect") into index arithmetic and a GATHER_ND that it does not. The
            # pad (399) is reversed as (a, b) blocks, R_a @ X @ R_b: two tiny matrices instead of
            # one of pad^2 floats (0.6 MB per use in the file)
            self.rev_a = next((a for a in range(int(math.isqrt(self.pad)), 0, -1) if self.pad % a == 0), 1)
            self.rev_b = self.pad // self.rev_a
            for name, n in (("rev_rows", self.rev_a), ("rev_cols", self.rev_b)):
                self.register_buffer(name, torch.from_numpy(np.eye(n, dtype=np.float32)[::-1].copy()))
            if stft == "dft_conv":
                # frame position first + j (j in the support) carries phase e^{-2 pi i k (first + j) / n_fft}
                j = np.arange(self.span, dtype=np.float64)
                phase = 2.0 * np.pi * np.outer(used, first + j) / fc.n_fft  # (K, span)
                w = np.concatenate([np.cos(phase) * win, -np.sin(phase) * win])  # (2K, span)
                self.register_buffer("dft", torch.from_numpy(w.astype(np.float32))[:, None, :])
                self.bins = int(used.size)
            elif stft == "radix32":
                self._init_radix(fc, first, win, used, bank)
            else:
                self.register_buffer("window", torch.from_numpy(win.astype(np.float32)))
                self.register_buffer("used", torch.from_numpy(used.astype(np.int64)))
                self.first = first

        def _reversed(self, x):
            """(B, pad) -> the same samples in reverse order (see __init__)."""
            blocks = x.reshape(x.shape[0], self.rev_a, self.rev_b)
            return torch.matmul(torch.matmul(self.rev_rows, blocks), self.rev_cols).reshape(x.shape[0], self.pad)

        def _init_radix(self, fc, first, win, used, bank) -> None:
            # n = r * n2 + n1 (frame position), k = k1 + r * k2 (bin): stage 1 is an r-point
            # DFT over n2 (the same (2r, r) matrix for every n1), stage 2 an r-point DFT over
            # n1 with the twiddles folded in (one (2r, 2 k2) matrix per k1).
            n_fft = fc.n_fft
            r = int(round(math.sqrt(n_fft)))
            if r * r != n_fft:
                raise ValueError(f"radix32 needs a square n_fft, got {n_fft}")
            self.radix = r
            self.k2 = int(used.max()) // r + 1  # bins up to the highest one a mel band weighs
            full = np.zeros(n_fft, dtype=np.float64)
            full[first:first + self.span] = win
            self.register_buffer("window", torch.from_numpy(full.astype(np.float32)))
            n2 = np.arange(r)
            k1 = np.arange(r)
            ph1 = 2.0 * np.pi * np.outer(k1, n2) / r  # (k1, n2)
            s1 = np.concatenate([np.cos(ph1), -np.sin(ph1)])  # (2r: re | im of k1, r: n2)
            self.register_buffer("stage1", torch.from_numpy(s1.astype(np.float32)))
            n1 = np.arange(r)[None, :, None]
            kk = k1[:, None, None] + r * np.arange(self.k2)[None, None, :]  # (k1, 1, k2)
            ph2 = 2.0 * np.pi * n1 * kk / n_fft  # (k1, n1, k2)
            g_re, g_im = np.cos(ph2), -np.sin(ph2)
            # [a_re, a_im] (2r) @ [[g_re, g_im], [-g_im, g_re]] -> [x_re, x_im] (2 k2)
            s2 = np.concatenate([np.concatenate([g_re, g_im], axis=2),
                                 np.concatenate([-g_im, g_re], axis=2)], axis=1)  # (r, 2r, 2k2)
            self.register_buffer("stage2", torch.from_numpy(s2.astype(np.float32)))
            full_bank = np.zeros((fc.n_mels, r * self.k2))
            full_bank[:, used] = bank
            # power comes out as (k1, k2); bin k1 + r k2 -> row k1 * k2count + k2
            perm = (k1[:, None] + r * np.arange(self.k2)[None, :]).reshape(-1)
            self.register_buffer("mel_bank_radix",
                                 torch.from_numpy(full_bank[:, perm].T.astype(np.float32)))  # (r*k2, M)

        def _radix_power_mel(self, y):
            """(B, 1, pad + L + pad) reflect-padded signal -> (B, M, T) mel power."""
            fc, r, hop = self.fc, self.radix, self.fc.hop_length
            b = y.shape[0]
            n_pre = y.shape[-1] - 2 * self.pad
            t = 1 + n_pre // hop
            # frame t = padded positions t*hop - first .. + n_fft: shift by `first` zeros; blocks of hop
            blocks_per_frame = -(-fc.n_fft // hop)
            lead = fc.n_fft // 2 - self.pad  # == first
            z = torch.nn.functional.pad(y[:, 0], (lead, blocks_per_frame * hop))
            z = z[:, :(t + blocks_per_frame - 1) * hop].reshape(b, t + blocks_per_frame - 1, hop)
            frames = torch.cat([z[:, i:i + t] for i in range(blocks_per_frame)], dim=-1)[..., :fc.n_fft]
            frames = (frames * self.window).reshape(b * t, r, r)  # (BT, n2, n1)
            a = torch.matmul(self.stage1, frames)  # (BT, 2r [re|im of k1], n1)
            a = a.reshape(b * t, 2, r, r).permute(2, 0, 1, 3).reshape(r, b * t, 2 * r)  # (k1, BT, [re|im] n1)
            x = torch.bmm(a, self.stage2)  # (k1, BT, [re|im] k2)
            re, im = x[..., :self.k2], x[..., self.k2:]
            power = (re * re + im * im).permute(1, 0, 2).reshape(b * t, r * self.k2)
            mel = torch.matmul(power, self.mel_bank_radix)  # (BT, M)
            return mel.reshape(b, t, fc.n_mels).transpose(1, 2)

        def forward(self, wave):
            fc = self.fc
            y = wave[:, 1:] - fc.preemphasis * wave[:, :-1]
            left = self._reversed(y[:, 1:self.pad + 1])  # y[pad], ..., y[1]
            right = self._reversed(y[:, -self.pad - 1:-1])  # y[-2], ..., y[-pad-1]
            y = torch.cat([left, y, right], dim=1)[:, None, :]
            if self.stft == "radix32":
                mel = self._radix_power_mel(y)
                out = (torch.log(mel + fc.log_offset) + fc.norm_shift) / fc.norm_scale
                return out[:, None]
            if self.stft == "dft_conv":
                spec = torch.nn.functional.conv1d(y, self.dft, stride=fc.hop_length)  # (B, 2K, T)
                re, im = spec[:, :self.bins], spec[:, self.bins:]
                power = re * re + im * im  # (B, K, T)
            else:
                frames = y[:, 0].unfold(-1, self.span, fc.hop_length) * self.window  # (B, T, span)
                frames = torch.nn.functional.pad(frames, (self.first, fc.n_fft - self.first - self.span))
                spec = torch.fft.rfft(frames, dim=-1)
                power = (spec.real ** 2 + spec.imag ** 2).index_select(-1, self.used).transpose(1, 2)
            mel = torch.matmul(self.mel_bank, power)  # (B, M, T)
            out = (torch.log(mel + fc.log_offset) + fc.norm_shift) / fc.norm_scale
            return out[:, None]

    class _WaveformModel(nn.Module):
        """Waveform -> (probabilities, embedding): frontend, export-form model, activation."""

        def __init__(self, model: nn.Module, fc: FrontendConfig, activation: str,
                     stft: str = "dft_conv") -> None:
            super().__init__()
            if activation not in ("sigmoid", "softmax"):
                raise ValueError(f"unknown activation '{activation}'")
            self.frontend = _WaveformFrontend(fc, stft)
            self.model = model
            self.activation = activation

        def forward(self, wave):
            logits, embedding = self.model(self.frontend(wave))
            probs = torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=-1)
            return probs, embedding

    return _WaveformFrontend, _WaveformModel


def WaveformFrontend(fc: FrontendConfig = FrontendConfig(), stft: str = "dft_conv"):  # noqa: N802
    """The torch frontend module (see the module docstring)."""
    return _torch_module_classes()[0](fc, stft)


def WaveformModel(model, fc: FrontendConfig, activation: str, stft: str = "dft_conv"):  # noqa: N802
    """``model`` (log-mel in, (logits, embedding) out) behind the in-graph frontend."""
    return _torch_module_classes()[1](model, fc, activation, stft)


# ---------------------------------------------------------------------------------------
# Writers: the same converters as the log-mel files, with a waveform input.

INPUT_NAME = "waveform"
OUTPUT_NAMES = ("probabilities", "embedding")


def _named_io(module):
    """litert-torch names the input by keyword and the outputs by dict key."""
    from torch import nn  # noqa: PLC0415

    class NamedIO(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, waveform):
            probabilities, embedding = self.inner(waveform)
            return {"probabilities": probabilities, "embedding": embedding}

    return NamedIO(module).eval()


def convert_waveform_tflite(module, samples: int) -> bytes:
    """fp32 flatbuffer of a :func:`WaveformModel` taking (1, ``samples``) float32."""
    import torch  # noqa: PLC0415

    from dymn_edge.errors import ExportError  # noqa: PLC0415
    from dymn_edge.export.tflite_export import _quiet_converter_progress  # noqa: PLC0415

    try:
        import litert_torch  # noqa: PLC0415
    except ImportError as exc:
        raise ExportError("TFLite export needs litert-torch: pip install 'dymn-edge[export]'") from exc
    _quiet_converter_progress()
    try:
        with torch.no_grad():
            edge = litert_torch.convert(_named_io(module),
                                        sample_kwargs={INPUT_NAME: torch.zeros(1, samples)})
        return bytes(edge.model_content())
    except Exception as exc:  # the converter raises many types
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"TFLite conversion (waveform input) failed: {first}") from exc


def export_waveform_onnx(module, path, *, samples: int, dynamic_batch: bool) -> None:
    """fp32 ONNX of a :func:`WaveformModel`: input (B, N), N dynamic (B too with ``dynamic_batch``).

    The dynamo exporter as for the log-mel files; onnxsim's result is kept only when it
    keeps the symbolic dims and the outputs at two lengths.
    """
    import warnings  # noqa: PLC0415

    import onnx  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from dymn_edge.errors import ExportError  # noqa: PLC0415

    hop = module.frontend.fc.hop_length
    n_dim = torch.export.Dim("samples", min=32 * hop + 1, max=10_000_000)
    dyn = {0: torch.export.Dim("batch", min=1, max=1024), 1: n_dim} if dynamic_batch else {1: n_dim}
    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx", "torch._export")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(max(lg.level, logging.WARNING))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (torch.zeros(1, samples),), input_names=[INPUT_NAME],
                                        output_names=list(OUTPUT_NAMES), dynamic_shapes=(dyn,),
                                        opset_version=18, dynamo=True, verbose=False, optimize=True)
    except Exception as exc:  # the exporter raises many types
        raise ExportError(f"ONNX export (waveform input) failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)
    program.save(str(path))
    model = onnx.load(str(path))
    try:
        import onnxsim  # noqa: PLC0415

        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # noqa: BLE001 - an optimisation, not a must
        log.warning("onnxsim failed (%s); keeping the unsimplified graph", str(exc).splitlines()[0][:200])
        ok = False
    if ok and _same_onnx(model, simplified, samples, hop):
        model = simplified
    onnx.save(model, str(path))


def _same_onnx(a, b, samples: int, hop: int) -> bool:
    """Same symbolic dims and the same outputs at two lengths (one not a multiple of hop)."""
    import onnxruntime as ort  # noqa: PLC0415

    def dims(m):
        return [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in list(m.graph.input) + list(m.graph.output)]

    if dims(a) != dims(b):
        log.warning("onnxsim fixed a dynamic dimension; keeping the unsimplified graph")
        return False
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sa, sb = (ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
              for m in (a, b))
    for n in (samples, samples + 3 * hop + 17):
        x = (0.1 * np.random.default_rng(n).standard_normal((1, n))).astype(np.float32)
        for p, q in zip(sa.run(None, {INPUT_NAME: x}), sb.run(None, {INPUT_NAME: x})):
            if float(np.max(np.abs(p - q))) > 1e-5 * (1.0 + float(np.max(np.abs(p)))):
                log.warning("onnxsim changed the outputs at %d samples; keeping the unsimplified graph", n)
                return False
    return True


# ---------------------------------------------------------------------------------------
# Validation: waveform in, PyTorch (frontend + model, float64) as the oracle.


def file_runner(path, fmt: str, threads: int = 1):
    """``(B, N) -> (probabilities, embedding)`` of a waveform file in its own engine.

    ONNX Runtime / ai-edge-litert directly (not the runtime package), as for log-mel files.
    """
    if fmt == "onnx":
        import onnxruntime as ort  # noqa: PLC0415

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        batch = sess.get_inputs()[0].shape[0]
        step = batch if isinstance(batch, int) and batch > 0 else None

        def run_onnx(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            parts = [wave] if step is None else [wave[i:i + step] for i in range(0, len(wave), step)]
            outs = [sess.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(p, np.float32)})
                    for p in parts]
            return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

        return run_onnx
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner("serving_default")

    def run_tflite(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outs = [runner(**{INPUT_NAME: np.ascontiguousarray(wave[i:i + 1], np.float32)})
                for i in range(len(wave))]
        return (np.concatenate([o["probabilities"] for o in outs]),
                np.concatenate([o["embedding"] for o in outs]))

    return run_tflite


def torch_runner(wmodel, *, float64: bool = False):
    """PyTorch frontend + model as a NumPy runner (float64: the closest to exact)."""
    import copy  # noqa: PLC0415

    import torch  # noqa: PLC0415

    m = copy.deepcopy(wmodel).double().eval() if float64 else wmodel.eval()
    dtype = np.float64 if float64 else np.float32

    def run(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            outs = [m(torch.from_numpy(np.ascontiguousarray(wave[i:i + 1], dtype))) for i in range(len(wave))]
        return (np.concatenate([o[0].numpy() for o in outs]), np.concatenate([o[1].numpy() for o in outs]))

    return run


def validation_cases(window_seconds: float, fc: FrontendConfig, samples: int, dynamic: bool
                     ) -> tuple[list[tuple[str, np.ndarray]], str]:
    """(label, (1, N) waveform) parity cases of real audio, and where the audio came from.

    Fixed-length files: two different windows of ``samples``. Dynamic-length (ONNX): the
    window, a length whose frame count is no multiple of the network's stride, and 3x.
    """
    from dymn_edge.audio import fit_to_length  # noqa: PLC0415
    from dymn_edge.export.calibration import validation_waves  # noqa: PLC0415

    lengths = ([window_seconds, round(window_seconds * 0.5 + 0.37, 2), window_seconds * 3.0]
               if dynamic else [window_seconds, window_seconds])
    waves, source = validation_waves(window_seconds, fc, lengths=lengths)
    cases = []
    for k, ((label, w), sec) in enumerate(zip(waves, lengths)):
        n = samples if (not dynamic or k == 0) else int(round(sec * fc.sample_rate)) + 7 * k
        cases.append((label, fit_to_length(np.asarray(w, np.float32), n)[None]))
    return cases, source


def check_parity(runner, reference, reference64, cases, tolerance: float | None, report) -> None:
    """File vs PyTorch float64 on every case, as the log-mel validation judges it.

    Allowed: ``tolerance + RELATIVE_FACTOR x`` PyTorch fp32's own distance to float64 on the
    same input. Checks and errors are appended to ``report`` (a ValidationReport).
    """
    import math as _math  # noqa: PLC0415

    from dymn_edge.export.validate import RELATIVE_FACTOR, OutputCheck  # noqa: PLC0415

    for label, wave in cases:
        try:
            got = runner(wave)
        except Exception as exc:  # noqa: BLE001 - a failing engine is a failed validation
            report.errors.append(f"{label}: the file does not run ({str(exc).splitlines()[0][:200]})")
            continue
        ref32, ref64 = reference(wave), reference64(wave)
        for k, name in enumerate(OUTPUT_NAMES):
            a, b = got[k], ref64[k]
            if a.shape != b.shape:
                report.errors.append(f"{label}: {name} shape {list(a.shape)} != reference {list(b.shape)}")
                continue
            diff = float(np.max(np.abs(a.astype(np.float64) - b))) if np.all(np.isfinite(a)) else _math.inf
            d32 = float(np.max(np.abs(ref32[k].astype(np.float64) - b)))
            allowed = None if tolerance is None else tolerance + RELATIVE_FACTOR * d32
            ok = allowed is None or diff <= allowed
            report.checks.append(OutputCheck(label, name, list(a.shape), diff, tolerance, ok, d32, allowed))
            if not _math.isfinite(diff):
                report.errors.append(f"{label}: {name} has non-finite values")
            elif not ok:
                report.errors.append(
                    f"{label}: {name} differs from PyTorch float64 by {diff:.3g} > allowed {allowed:.3g} "
                    f"(tolerance {tolerance:g} + {RELATIVE_FACTOR:g} x PyTorch fp32's own {d32:.3g})")


# ---------------------------------------------------------------------------------------
# The exporter's entry points (dymn_edge.export.api calls these for ``--waveform``).

#: The STFT form written by the exporter (measured: see the README, "Waveform in, tags out").
DEFAULT_STFT = "radix32"


def write_waveform_file(exportable, path, fmt: str, fc: FrontendConfig, activation: str,
                        frames: int, window_seconds: float, dynamic_batch: bool) -> None:
    """Convert the patched model behind the in-graph frontend to ``path`` (fp32, no metadata)."""
    from pathlib import Path  # noqa: PLC0415

    wmodel = WaveformModel(exportable, fc, activation, DEFAULT_STFT).eval()
    samples = waveform_samples(frames, fc, window_seconds)
    if fmt == "onnx":
        export_waveform_onnx(wmodel, path, samples=samples, dynamic_batch=dynamic_batch)
    else:
        Path(path).write_bytes(convert_waveform_tflite(wmodel, samples))


def mediapipe_info(meta):
    """The MediaPipe metadata of a waveform TFLite file, from its dymn-edge metadata."""
    from dymn_edge.export.mediapipe_metadata import MediaPipeAudioInfo  # noqa: PLC0415

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


def _load_runtime_engine(path):
    """The written file in the runtime's engine (what dymn-tag runs), without the load banner."""
    from pathlib import Path  # noqa: PLC0415

    from dymn_edge.metadata import detect_format  # noqa: PLC0415
    from dymn_edge.runtime.engines import LiteRTEngine, OnnxEngine  # noqa: PLC0415

    p = Path(path)
    return OnnxEngine(p, threads=1) if detect_format(p) == "onnx" else LiteRTEngine(p, threads=1)


def validate_waveform_file(path, cfg, model, meta, progress: bool):
    """Validate a waveform file: the runtime's engine vs PyTorch frontend + model (float64).

    The oracle is the training-faithful model (not the patched export form) behind
    :func:`WaveformFrontend`, the latter checked against the NumPy frontend by the tests.
    Optionally the accuracy on ``cfg.eval_dataset`` through the runtime's audio path.
    """
    import time  # noqa: PLC0415

    from dymn_edge.errors import DymnEdgeError  # noqa: PLC0415
    from dymn_edge.export import validate as v  # noqa: PLC0415

    t = time.perf_counter()
    fc = meta.frontend_config
    report = v.ValidationReport(engine=cfg.format_spec.validator_engine, audio="",
                                precision=cfg.precision.value)
    try:
        engine = _load_runtime_engine(path)
    except DymnEdgeError as exc:
        report.errors.append(f"the file does not load in the runtime ({exc})")
        return report
    report.engine = f"{engine.name} (dymn_edge.runtime)"
    wmodel = WaveformModel(model, fc, meta.output_activation, DEFAULT_STFT).eval()
    ref32, ref64 = torch_runner(wmodel), torch_runner(wmodel, float64=True)
    samples = engine.input_spec.samples or waveform_samples(meta.window_frames, fc, meta.window_seconds)
    cases, report.audio = validation_cases(meta.window_seconds, fc, samples, meta.dynamic_time)
    check_parity(engine.run, ref32, ref64, cases, cfg.format_spec.tolerance.get(cfg.precision.value), report)
    if cfg.eval_dataset is not None:
        acc = v.evaluate_dataset(path, ref32, cfg.eval_dataset, progress=progress)
        report.accuracy = acc
        drop = cfg.extra.get("max_accuracy_drop", 0.02)
        if "accuracy_delta" in acc and acc["accuracy_delta"] < -drop:
            report.errors.append(f"accuracy on {acc['dataset']} dropped {-acc['accuracy_delta']:.4f} "
                                 f"(> {drop:g}): {acc['reference_accuracy']:.4f} -> {acc['accuracy']:.4f}")
    if cfg.format.value == "tflite":
        report.xnnpack_ops_outside = v.ops_outside_xnnpack(path)
    report.seconds = time.perf_counter() - t
    return report
