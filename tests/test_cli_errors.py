"""Bad options and bad input: one line on stderr, a non-zero exit, never a traceback.

Each case is a command line a new user typed (the issue-10 battery: tracebacks and silent
acceptances); the tools run in-process on real files (the FSDD ONNX export, WAVs written here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import require_file

FSDD_WEIGHTS = "reference/fsdd_dymn04.pt"


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    out = {"ok": d / "ok.wav", "one": d / "one_sample.wav", "empty": d / "empty.wav"}
    sf.write(out["ok"], (0.1 * rng.standard_normal(32000)).astype(np.float32), 32000)
    sf.write(out["one"], np.array([0.1], np.float32), 32000)
    sf.write(out["empty"], np.zeros(0, np.float32), 32000)
    return out


# (tool, arguments; "{model}", "{ok}", "{one}", "{tmp}", "{weights}" are filled in, expected words)
CASES = [
    ("tag", ["--window", "nan", "{ok}"], "finite"),
    ("tag", ["--window", "inf", "{ok}"], "finite"),
    ("tag", ["--window", "abc", "{ok}"], "invalid number"),
    ("tag", ["--hop=-inf", "{ok}"], "finite"),
    ("tag", ["--threshold", "2", "{ok}"], "--threshold"),
    ("tag", ["--threshold", "-1", "{ok}"], "--threshold"),
    ("tag", ["--dither", "-1", "{ok}"], "--dither"),
    ("tag", ["--window", "0.5", "--hop", "0.8", "{ok}"], "longer than"),
    ("tag", ["--hop", "0", "{ok}"], "--hop"),
    ("tag", ["--top-k", "0", "{ok}"], "--top-k"),
    ("tag", ["{one}"], "too short"),
    ("tag", ["{empty}"], "no samples"),
    ("listen", ["--device-rate", "0"], "--device-rate"),
    ("listen", ["--threshold", "2"], "--threshold"),
    ("listen", ["--window", "0.5", "--hop", "2"], "longer than"),
    ("export", ["--model", "dymn-s", "--random-init", "--format", "tflite", "--output", "{tmp}/x.onnx"],
     "contradicts --format tflite"),
    ("export", ["--model", "dymn-s", "--random-init", "--format", "onnx", "--output", "{tmp}/nowhere/"],
     "does not exist"),
    ("export", ["--model", "dymn-s", "--random-init", "--format", "onnx", "--output", "{tmp}/ok.wav/x.onnx"],
     "does not exist"),
    ("export", ["--model", "dymn-s", "--random-init", "--format", "onnx", "--output", "/proc/x.onnx"],
     "cannot write"),
    ("export", ["--model", "dymn-s", "--random-init", "--format", "tflite", "--int8",
                "--calibration", "{tmp}"], "needs no calibration"),
    ("export", ["--model", "dymn-s", "--random-init", "--format", "onnx", "--num-calibration", "8"],
     "needs no calibration"),
    ("export", ["--model", "dymn-s", "--random-init", "--format", "tflite", "--full-int8"],
     "--full-int8 needs calibration audio: pass --calibration DIR"),
    ("export", ["--model", "dymn-s", "--random-init", "--format", "tflite", "--full-int8",
                "--calibration", "{tmp}/missing"], "--calibration"),
    ("export", ["--model", "dymn-s", "--random-init", "--format", "onnx", "--window", "nan"], "finite"),
    ("export", ["--model", "dymn-s", "--random-init", "--format", "onnx", "--activation", "relu"],
     "--activation"),
    ("export", ["--model", "dymn-s", "--weights", "{weights}", "--format", "onnx", "--output", "{tmp}/"],
     "--activation softmax"),
]


@pytest.mark.parametrize("tool,argv,expected", CASES,
                         ids=[f"{t}:{' '.join(a)[:40]}" for t, a, _ in CASES])
def test_bad_input_is_one_line_error(tool: str, argv: list[str], expected: str, request, wavs,
                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fill = {"ok": str(wavs["ok"]), "one": str(wavs["one"]), "empty": str(wavs["empty"]),
            "tmp": str(tmp_path)}
    (tmp_path / "ok.wav").write_bytes(b"")  # a file where a folder is expected
    if "{weights}" in " ".join(argv):
        fill["weights"] = str(require_file(FSDD_WEIGHTS))
    args = [a.format(**fill) for a in argv]
    if tool == "export":
        from dymn_edge.export.cli import main
    else:
        from dymn_edge.runtime.cli import listen_main, tag_main

        main = tag_main if tool == "tag" else listen_main
        args = ["--model", str(request.getfixturevalue("fsdd_export")("onnx").path)] + args
        capsys.readouterr()  # the session export's own output (first use) is not this command's
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse
        rc = exc.code
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert rc not in (0, None), f"accepted silently: {args}"
    assert len(err) == 1, err
    assert "Traceback" not in captured.err and "error:" in err[0]
    assert expected in err[0], err[0]
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*partial*"))
