"""File tagging and ``dymn-tag``: the trained FSDD model tags real spoken digits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dymn_edge.errors import DymnEdgeError, LabelsError
from dymn_edge.runtime.cli import tag_main
from dymn_edge.runtime.engines import load_engine
from dymn_edge.runtime.output import TagFilter
from dymn_edge.runtime.tagger import Tagger, activation


@pytest.fixture(scope="module")
def onnx_tagger(fsdd_onnx: Path) -> Tagger:
    return Tagger(load_engine(fsdd_onnx, threads=1))


def test_right_digit_is_top_tag(fsdd_model: Path, fsdd_test_clips: list[tuple[Path, int]]) -> None:
    tagger = Tagger(load_engine(fsdd_model, threads=1))
    hits = [int(np.argmax(tagger.tag_file(p)[0].probabilities)) == d for p, d in fsdd_test_clips]
    assert sum(hits) >= 8, f"{sum(hits)}/10 clips tagged with the right digit"


@pytest.mark.parametrize("fmt,precision", [("onnx", "int8"), ("tflite", "fp16"), ("tflite", "int8"),
                                           ("tflite", "full_int8")])
def test_every_export_precision_tags_files(fsdd_export, fmt: str, precision: str,
                                           fsdd_test_clips: list[tuple[Path, int]]) -> None:
    """The quantized files the exporter ships run through the same runtime path."""
    path = Path(fsdd_export(fmt, precision).path)
    tagger = Tagger(load_engine(path, threads=1))
    assert tagger.metadata.precision == precision.removeprefix("full_")
    if precision == "full_int8":  # int8 in and out: the engine (de)quantizes from the metadata
        assert tagger.metadata.inputs[0].dtype == "int8" and tagger.metadata.inputs[0].scale
    hits = [int(np.argmax(tagger.tag_file(p)[0].probabilities)) == d for p, d in fsdd_test_clips]
    assert sum(hits) >= 8, f"{fmt} {precision}: {sum(hits)}/10 clips tagged with the right digit"


def test_probabilities_follow_metadata_activation(onnx_tagger: Tagger, fsdd_test_clips) -> None:
    assert onnx_tagger.metadata.output_activation == "softmax"
    r = onnx_tagger.tag_file(fsdd_test_clips[0][0])[0]
    assert r.probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(activation(np.array([0.0, 100.0, -100.0]), "sigmoid"), [0.5, 1.0, 0.0], atol=1e-6)


def test_short_clip_is_centred_and_padded_not_dropped(onnx_tagger: Tagger, fsdd_test_clips) -> None:
    r = onnx_tagger.tag_file(fsdd_test_clips[3][0], windowed=True, window_s=1.0, hop_s=0.5)
    assert len(r) == 1 and r[0].padded and r[0].start == 0.0
    assert r[0].end < 1.0  # the real length is reported, not the padded one


def test_windows_cover_every_sample(onnx_tagger: Tagger) -> None:
    sr = 32000
    spans = onnx_tagger.windows(int(3.3 * sr), 1.0, 0.5)
    assert spans[0] == (0, sr) and spans[-1][1] == int(3.3 * sr)
    assert all(b - a == sr for a, b in spans)  # the last one is end-aligned, not padded
    assert [a for a, _ in spans[:-1]] == [k * sr // 2 for k in range(len(spans) - 1)]


def test_fixed_shape_model_cannot_look_further(fsdd_tflite: Path) -> None:
    tagger = Tagger(load_engine(fsdd_tflite))
    with pytest.raises(DymnEdgeError, match="exported for 1 s"):
        tagger.tag_windows(np.zeros(96000, np.float32), 2.0, 1.0)
    whole = tagger.tag_clip(np.zeros(3 * 32000 + 17, np.float32))
    assert whole.end == pytest.approx(3.0 + 17 / 32000)


def test_metro_station_windows(fsdd_model: Path, metro_wav: Path, capsys: pytest.CaptureFixture) -> None:
    rc = tag_main(["--model", str(fsdd_model), "--window", "1", "--hop", "0.5", "--json", str(metro_wav)])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 19  # 10 s, 1 s windows every 0.5 s
    assert lines[0]["start"] == 0.0 and lines[-1]["end"] == pytest.approx(10.0, abs=1e-3)
    for obj in lines:
        assert set(obj) >= {"start", "end", "tags"}
        assert len(obj["tags"]) == 5
        assert set(obj["tags"][0]) == {"label", "index", "mid", "probability"}
        probs = [t["probability"] for t in obj["tags"]]
        assert probs == sorted(probs, reverse=True)


def test_table_output(fsdd_onnx: Path, fsdd_test_clips, capsys: pytest.CaptureFixture) -> None:
    path, digit = fsdd_test_clips[7]
    assert tag_main(["--model", str(fsdd_onnx), "--top-k", "2", str(path)]) == 0
    out = capsys.readouterr().out
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert str(path) in out and "whole clip" in out
    body = out.splitlines()[2]
    assert names[digit] in body


def test_top_k_threshold_include_exclude(fsdd_onnx: Path, fsdd_test_clips, capsys) -> None:
    path, digit = fsdd_test_clips[2]  # "two"

    def run(*extra: str) -> list[dict]:
        assert tag_main(["--model", str(fsdd_onnx), "--json", *extra, str(path)]) == 0
        return json.loads(capsys.readouterr().out.splitlines()[0])["tags"]

    assert len(run("--top-k", "3")) == 3
    above = run("--threshold", "0.2", "--top-k", "10")
    assert 1 <= len(above) < 10 and all(t["probability"] >= 0.2 for t in above)  # the threshold cut some
    only = run("--include", "seven", "--include", "one,nine", "--top-k", "10")
    assert {t["label"] for t in only} == {"seven", "one", "nine"}
    others = {t["label"] for t in run("--exclude", "two", "--top-k", "10")}
    assert len(others) == 9 and "two" not in others
    assert run("--top-k", "1")[0]["label"] == "two"


def test_unknown_label_suggests(onnx_tagger: Tagger, fsdd_onnx: Path, capsys) -> None:
    with pytest.raises(LabelsError, match="Did you mean 'seven'"):
        TagFilter.build(onnx_tagger.labels, include=["sevn"])
    assert tag_main(["--model", str(fsdd_onnx), "--exclude", "sevn", "x.wav"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dymn-tag: error: unknown label 'sevn'") and "Did you mean 'seven'" in err
    assert "\n" not in err


def test_cli_errors_exit_2(fsdd_onnx: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"nope" * 100)
    assert tag_main(["--model", str(bad), "a.wav"]) == 2
    assert tag_main(["--model", str(fsdd_onnx), str(tmp_path / "missing.wav")]) == 2
    assert tag_main(["--model", str(fsdd_onnx)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("dymn-tag: error:") for e in err)


def test_untrained_warning_in_every_output(fsdd_onnx: Path, tmp_path: Path, capsys, metro_wav: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(fsdd_onnx))
    for p in model.metadata_props:
        if p.key == "dymn_edge":
            meta = json.loads(p.value)
            meta["untrained"] = True
            p.value = json.dumps(meta)
    path = tmp_path / "untrained.onnx"
    onnx.save(model, str(path))
    assert tag_main(["--model", str(path), str(metro_wav)]) == 0
    assert "UNTRAINED" in capsys.readouterr().out
    assert tag_main(["--model", str(path), "--json", "--window", "1", str(metro_wav)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines and all(obj.get("untrained") is True for obj in lines)


def test_dymn_tag_console_script(fsdd_onnx: Path, fsdd_test_clips) -> None:
    path, digit = fsdd_test_clips[5]
    proc = subprocess.run([sys.executable, "-c", "import sys; from dymn_edge.runtime.cli import tag_main; "
                           "sys.exit(tag_main())", "--model", str(fsdd_onnx), "--json", "--top-k", "1", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tags"][0]["index"] == digit
