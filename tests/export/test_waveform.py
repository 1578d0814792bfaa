"""``dymn-export --waveform``: the log-mel frontend inside the graph, checked on real audio.

- the torch frontend and the frontend as converted (TFLite, ONNX) against the NumPy
  frontend the checkpoints were trained with, within 1e-4, first and last frames included;
- the exported FSDD DyMN-S waveform files in plain LiteRT / ONNX Runtime against PyTorch
  (frontend + training-faithful model) at the format tolerance;
- ``dymn-tag`` / the streaming scorer on a waveform file against the log-mel file of the
  same model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_file
from waveform_exports import fsdd_split, fsdd_waveform_export

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

FRONTEND_TOL = 1e-4
FORMAT_TOL = 1e-3  # the fp32 tolerance of both formats (dymn_edge.export.formats)


def _read(path):
    from dymn_edge.audio import read_audio

    return read_audio(path, 32000).astype(np.float32)


@pytest.fixture(scope="module")
def real_audio(fsdd_dir, metro_wav) -> list[np.ndarray]:
    """Real recordings as they come (no centring: the reflect padding at both ends is used)."""
    clips = [_read(p) for p, _ in fsdd_split("test")[::37]]
    metro = _read(metro_wav)
    return clips + [metro[:32000], metro[48000:48000 + 75_931], metro[:320_000]]


def _numpy_logmel(wave: np.ndarray) -> np.ndarray:
    from dymn_edge.frontend import LogMelFrontend

    return LogMelFrontend()(wave)


@pytest.mark.parametrize("stft", ["radix32", "dft_conv", "rfft"])
def test_torch_frontend_matches_numpy(stft, real_audio):
    import torch

    from dymn_edge.export.waveform import WaveformFrontend

    fe = WaveformFrontend(stft=stft).eval()
    for wave in real_audio:
        ref = _numpy_logmel(wave)
        with torch.no_grad():
            got = fe(torch.from_numpy(wave)[None])[0, 0].numpy()
        assert got.shape == ref.shape
        diff = np.abs(got - ref)
        assert diff.max() <= FRONTEND_TOL, (stft, len(wave), float(diff.max()))
        assert diff[:, 0].max() <= FRONTEND_TOL and diff[:, -1].max() <= FRONTEND_TOL


def test_frontend_as_converted_matches_numpy(tmp_path, real_audio):
    """The default STFT form after litert-torch (fixed N) and the dynamo ONNX exporter (any N)."""
    import litert_torch
    import onnxruntime as ort
    import torch
    from ai_edge_litert.interpreter import Interpreter

    from dymn_edge.export.waveform import DEFAULT_STFT, WaveformFrontend

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fe = WaveformFrontend(stft=DEFAULT_STFT)

        def forward(self, waveform):
            return {"mel": self.fe(waveform)}

    n = 32000
    with torch.no_grad():
        tfl = litert_torch.convert(Named().eval(), sample_kwargs={"waveform": torch.zeros(1, n)})
    runner = Interpreter(model_content=bytes(tfl.model_content()), num_threads=1).get_signature_runner()
    onnx_path = tmp_path / "frontend.onnx"
    fe = WaveformFrontend(stft=DEFAULT_STFT).eval()
    with torch.no_grad():
        torch.onnx.export(fe, (torch.zeros(1, n),), dynamo=True, input_names=["waveform"],
                          output_names=["mel"], opset_version=18,
                          dynamic_shapes=({1: torch.export.Dim("samples", min=10241, max=10_000_000)},)
                          ).save(str(onnx_path))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for wave in real_audio:
        ref = _numpy_logmel(wave)
        got_onnx = sess.run(None, {"waveform": wave[None]})[0][0, 0]
        assert got_onnx.shape == ref.shape and np.abs(got_onnx - ref).max() <= FRONTEND_TOL
        if len(wave) >= n:
            w = wave[:n]
            got_tfl = runner(waveform=w[None])["mel"][0, 0]
            assert np.abs(got_tfl - _numpy_logmel(w)).max() <= FRONTEND_TOL


def test_frontend_macs_count_the_matmuls():
    """The analytic MACs of the default form equal the MatMul MACs of its ONNX graph."""
    from dymn_edge.export.waveform import frontend_macs

    r, k2, frames = 32, 15, 100  # 1 s: 100 frames; bins 1..479 -> 15 second-stage bins
    matmuls = 2 * 399 * (21 + 19) + frames * (2 * r * r * r + r * 2 * r * 2 * k2 + r * k2 * 128)
    elementwise = 32000 + frames * (1024 + 2 * r * k2)
    assert frontend_macs(32000) == matmuls + elementwise
    assert frontend_macs(32000, stft="dft_conv") > 4 * frontend_macs(32000)


def test_waveform_is_fp32_only(capsys):
    from dymn_edge.errors import ExportError
    from dymn_edge.export.cli import main
    from dymn_edge.export.config import ExportConfig

    with pytest.raises(ExportError, match="fp32 only"):
        ExportConfig(format="tflite", precision="int8", waveform=True, random_init=True)
    assert main(["--model", "dymn-s", "--random-init", "--format", "tflite", "--fp16", "--waveform"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fp32 only" in err[0]


# --------------------------------------------------------------------------------------------
# the exported FSDD DyMN-S


@pytest.fixture(scope="module")
def wave_tflite():
    return fsdd_waveform_export("tflite")


@pytest.fixture(scope="module")
def wave_onnx():
    return fsdd_waveform_export("onnx")


@pytest.fixture(scope="module")
def reference():
    """PyTorch frontend + training-faithful FSDD DyMN-S, softmax: the oracle."""
    from dymn_edge.export.validate import torch_runner
    from dymn_edge.export.waveform import WaveformModel
    from dymn_edge.models import create_model
    from dymn_edge.registry import FrontendConfig

    model = create_model("dymn-s", weights=require_file("reference/fsdd_dymn04.pt")).eval()
    return torch_runner(WaveformModel(model, FrontendConfig(), "softmax"))


def _windows(n: int = 8) -> np.ndarray:
    """1 s windows of FSDD test digits, prepared as dymn-tag prepares them (centred, noise floor)."""
    from dymn_edge.audio import fit_to_length

    rng = np.random.default_rng([0, 32000])
    noise = rng.normal(0.0, 1e-4, 32000).astype(np.float32)
    return np.stack([fit_to_length(_read(p), 32000) + noise for p, _ in fsdd_split("test")[::300 // n][:n]])


def test_waveform_files_describe_themselves(wave_tflite, wave_onnx):
    from dymn_edge.metadata import read_metadata

    for result, fmt in ((wave_tflite, "tflite"), (wave_onnx, "onnx")):
        meta = read_metadata(result.path)
        assert meta.input_kind == "waveform" and meta.takes_waveform and meta.schema_version == 2
        assert meta.format == fmt and meta.precision == "fp32" and meta.output_activation == "softmax"
        assert [o.name for o in meta.outputs] == ["probabilities", "embedding"]
        assert meta.inputs[0].name == "waveform"
        assert result.report["passed"] is True
        assert {c["name"] for c in result.report["checks"]} == {"probabilities", "embedding"}
        assert all(c["max_abs_diff"] <= c["allowed"] for c in result.report["checks"])
        assert all(c["max_abs_diff"] <= FORMAT_TOL for c in result.report["checks"] if c["scale"] < 100)
    assert read_metadata(wave_tflite.path).inputs[0].shape == [1, 32000]
    assert read_metadata(wave_onnx.path).inputs[0].shape[-1] == "samples"  # any length
    # the frontend adds nothing outside XNNPACK: only the model's runtime-filter depthwise convs stay out
    assert set(wave_tflite.report["xnnpack_ops_outside"]) <= {"DEPTHWISE_CONV_2D", "DELEGATE"}


def test_tflite_file_in_plain_litert_matches_pytorch(wave_tflite, reference):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(wave_tflite.path), num_threads=1).get_signature_runner()
    waves = _windows()
    ref_p, ref_e = reference(waves)
    for i, w in enumerate(waves):
        out = runner(waveform=w[None])
        assert np.abs(out["probabilities"][0] - ref_p[i]).max() <= FORMAT_TOL
        assert np.abs(out["embedding"][0] - ref_e[i]).max() <= FORMAT_TOL
    assert (ref_p.argmax(1) == np.array([d for _, d in fsdd_split("test")[::300 // 8][:8]])).mean() >= 0.75


def test_onnx_file_in_onnxruntime_matches_pytorch_at_any_length(wave_onnx, reference, metro_wav):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(wave_onnx.path), providers=["CPUExecutionProvider"])
    metro = _read(metro_wav)
    cases = [*_windows(4), metro[:75_931], metro[100_000:100_000 + 24_650]]  # 2.37 s, 0.77 s
    for w in cases:
        p, e = sess.run(["probabilities", "embedding"], {"waveform": w[None]})
        rp, re_ = reference(w[None])
        assert np.abs(p - rp).max() <= FORMAT_TOL and np.abs(e - re_).max() <= FORMAT_TOL


def test_dymn_tag_on_waveform_file_equals_logmel_file(wave_tflite, wave_onnx, fsdd_export, capsys):
    """Same windows, same scores: the waveform file replaces the NumPy frontend, nothing else."""
    from dymn_edge.runtime.cli import tag_main
    from dymn_edge.runtime.engines import load_engine
    from dymn_edge.runtime.tagger import Tagger

    logmel = Tagger(load_engine(fsdd_export("tflite").path))
    for result in (wave_tflite, wave_onnx):
        wave = Tagger(load_engine(result.path))
        assert wave.frontend is None and wave.window_samples == logmel.window_samples
        for path, _ in fsdd_split("test")[5::30]:
            a, b = logmel.tag_file(path)[0], wave.tag_file(path)[0]
            assert np.argmax(a.probabilities) == np.argmax(b.probabilities)
            assert np.abs(a.probabilities - b.probabilities).max() <= FORMAT_TOL
    # windowed: a 3.4 s recording of several digits, 1 s windows at 0.5 s hop. A waveform file
    # sees each window's own audio (its frontend is in the graph); the log-mel file's windows
    # are slices of the recording's continuous log-mel, so the per-window twin is
    # Tagger.score on the same window's audio
    long = np.concatenate([_read(p) for p, _ in fsdd_split("test")[:6]])
    wave = Tagger(load_engine(wave_tflite.path))
    b = wave.tag_windows(long, 1.0, 0.5)
    spans = logmel.windows(len(long), 1.0, 0.5)
    assert [(x.start, x.end) for x in b] == [(s / 32000, e / 32000) for s, e in spans]
    a = [logmel.score(long[s:e], s / 32000, e / 32000) for s, e in spans]
    assert max(np.abs(x.probabilities - y.probabilities).max() for x, y in zip(a, b)) <= FORMAT_TOL
    # the CLI: the same tags, the same probabilities to the tolerance
    clip = str(fsdd_split("test")[0][0])
    outs = []
    for model in (fsdd_export("tflite").path, wave_tflite.path):
        assert tag_main(["--model", str(model), clip, "--json", "--top-k", "3"]) == 0
        outs.append([json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")])
    assert len(outs[0]) == len(outs[1]) == 1
    (ra,), (rb,) = outs
    assert [t["label"] for t in ra["tags"]] == [t["label"] for t in rb["tags"]]
    assert all(abs(x["probability"] - y["probability"]) <= FORMAT_TOL for x, y in zip(ra["tags"], rb["tags"]))


def test_stream_on_waveform_file_scores_windows_as_the_logmel_file(wave_tflite, fsdd_export):
    """dymn-listen's scorer on a waveform file: each hop's window scores as the log-mel file
    scores that window of audio (the tagger's per-window path: centred, noise floor, frontend)."""
    from dymn_edge.runtime.engines import load_engine
    from dymn_edge.runtime.stream import StreamingScorer
    from dymn_edge.runtime.tagger import Tagger

    audio = np.concatenate([_read(p) for p, _ in fsdd_split("test")[:8]])
    logmel = Tagger(load_engine(fsdd_export("tflite").path))
    scorer = StreamingScorer(Tagger(load_engine(wave_tflite.path)), hop_s=0.5)
    got = []
    for i in range(0, len(audio), 4000):  # 125 ms chunks
        got += scorer.push(audio[i:i + 4000]).scores
    assert len(got) >= 5
    for w in got:
        a, b = round(w.start * 32000), round(w.end * 32000)
        ref = logmel.score(audio[a:b], w.start, w.end)
        assert np.argmax(ref.probabilities) == np.argmax(w.probabilities)
        assert np.abs(ref.probabilities - w.probabilities).max() <= FORMAT_TOL
