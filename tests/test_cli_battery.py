"""Issue 19's battery: options that were accepted and ignored, NaN / huge numbers, folders
where files are expected, unwritable outputs. Each is one ``prog: error:`` line and exit 2,
found before any export or timing starts; a benchmark whose rows fail exits 1.

The tools run in-process on real files (the FSDD exports of the session, WAVs written here);
stderr is captured whole, so an "Exception ignored" report or a traceback fails the case.
"""

from __future__ import annotations

import importlib
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import require_file

FSDD_WEIGHTS = "reference/fsdd_dymn04.pt"
FSDD_DIR = "datasets/fsdd"

TOOLS = {
    "tag": ("dymn_edge.runtime.cli", "tag_main"),
    "bench": ("dymn_edge.benchmarks.cli", "main"),
    "export": ("dymn_edge.export.cli", "main"),
    "info": ("dymn_edge.runtime.info", "main"),
}

# (tool, arguments, expected words); {onnx}, {tflite}, {wav}, {tmp}, {weights}, {fsdd} are filled
EXPORT = ["--model", "dymn-s", "--random-init", "--format", "onnx"]
CASES = [
    ("tag", ["--model", "{onnx}", "--window", "1e9", "{wav}"], "longer than 600 s"),
    ("tag", ["--model", "{onnx}", "--threads", "100000", "{wav}"], "--threads"),
    ("tag", ["--model", "{onnx}", "--threads", "0", "{wav}"], "--threads"),
    ("tag", ["--model", "{onnx}", "--dither", "1e6", "{wav}"], "--dither"),
    ("tag", ["--model", "{onnx}", "--delegate", "xnnpack", "{wav}"], "--delegate applies to TFLite"),
    ("tag", ["--model", "{tflite}", "--delegate", "{tmp}/missing_delegate.so", "{wav}"],
     "cannot load LiteRT delegate"),
    ("tag", ["--model", "{tflite}", "--delegate", "xnnpack:threads=2", "{wav}"], "takes no options"),
    ("tag", ["--model", "{onnx}", "--scores", "{wav}"], "--scores"),
    ("tag", ["--model", "{onnx}", "--embeddings", "{wav}"], "--embeddings"),
    ("tag", ["--model", "{onnx}", "--include", "one", "--exclude", "one", "{wav}"], "both name one"),
    ("tag", ["--model", "{tmp}", "{wav}"], "is a folder"),
    ("tag", ["--model", "{onnx}", "{tmp}"], "directory"),
    ("tag", ["--model", "{tmp}/truncated.onnx", "{wav}"], "truncated.onnx"),
    ("info", ["{tmp}/truncated.onnx"], "not a readable ONNX file"),
    ("info", ["{tmp}"], "is a folder"),
    ("bench", ["--lengths", "nan"], "--lengths"),
    ("bench", ["--lengths", "1,inf"], "--lengths"),
    ("bench", ["--window", "0"], "--window"),
    ("bench", ["--window", "nan"], "--window"),
    ("bench", ["--window", "0.01"], "--window must be between"),
    ("bench", ["--budget", "-1"], "--budget"),
    ("bench", ["--budget", "1e12"], "--budget is seconds"),
    ("bench", ["--lengths", "1,,2"], "empty entry"),
    ("bench", ["--lengths", "1,1"], "repeats a value"),
    ("bench", ["--threads", "1,1"], "repeats a value"),
    ("bench", ["--formats", "onnx:fp32,ONNX:fp32"], "--formats has an empty or repeated entry"),
    ("bench", ["--model", "dymn-s,dymn-s"], "--model has an empty or repeated entry"),
    ("bench", ["--threads", "100000"], "--threads"),
    ("bench", ["--plot", "{tmp}/x.txt"], "--plot"),
    ("bench", ["--json", "/proc/x.json"], "cannot write"),
    ("bench", ["--json", "{tmp}"], "is a folder"),
    ("bench", ["--write-baseline", "{tmp}/none/b.json"], "does not exist"),
    ("bench", ["--compare", "{wav}"], "not a dymn-bench JSON"),
    ("bench", ["--compare", "{tmp}/list.json"], "not a dymn-bench baseline"),
    ("bench", ["--compare", "{tmp}"], "is a folder"),
    ("bench", ["--data", "{tmp}"], "unknown dataset layout"),
    ("bench", ["--data", "{tmp}/missing"], "not found"),
    ("bench", ["--workers", "2"], "--score-file"),
    ("bench", ["--scheduler", "tcp://127.0.0.1:1"], "--score-file"),
    ("bench", ["--max-clips", "0", "--data", "{fsdd}"], "--max-clips"),
    ("bench", ["--max-clips", "5"], "add --data"),
    ("bench", ["--split", "test"], "add --data"),
    ("bench", ["--calibration", "{tmp}"], "--calibration is used by"),
    ("bench", ["--npu-files", "x.tflite"], "--npu"),
    ("bench", ["--weights", "{weights}", "--formats", "onnx:fp32"], "--activation softmax"),
    ("bench", ["--weights", "{wav}", "--formats", "onnx:fp32"], "not a readable PyTorch checkpoint"),
    ("bench", ["--weights", "{tmp}", "--formats", "onnx:fp32"], "is a folder"),
    ("bench", ["--model", "dymn-m", "--weights", "{weights}", "--activation", "softmax",
               "--formats", "onnx:fp32"], "dymn"),
    ("export", EXPORT + ["--calibration-method", "minmax"], "--calibration-method"),
    ("export", EXPORT + ["--eval-dataset", "{tmp}/missing"], "--eval-dataset"),
    ("export", EXPORT + ["--eval-dataset", "{tmp}"], "--eval-dataset"),
    ("export", ["--model", "dymn-s", "--weights", "{tmp}", "--format", "onnx"], "is a folder"),
    ("export", ["--model", "dymn-s", "--random-init", "--format", "tflite", "--strategy", "fused"],
     "does not take --strategy fused"),
    ("export", ["--model", "mn-s", "--random-init", "--format", "onnx", "--strategy", "fused"],
     "no dynamic blocks"),
    ("export", EXPORT + ["--strategy", "fused", "--int8"], "fp32"),
    ("export", EXPORT + ["--strategy", "fused", "--waveform"], "--waveform"),
    ("bench", ["--formats", "onnx:fused"], "openvino:fused"),
    ("export", EXPORT + ["--labels", "{tmp}"], "is a folder"),
    ("export", EXPORT + ["--labels", "{tmp}/dup.csv"], "repeats line"),
    # second pass: empty values, options a mode would ignore
    ("tag", ["--model", "{onnx}", ""], "an audio file name is empty"),
    ("tag", ["--model", "{onnx}", "--include", "", "{wav}"], "empty label name"),
    ("tag", ["--model", "{onnx}", "--delegate", "", "{wav}"], "--delegate is empty"),
    ("tag", ["--model", "{tflite}", "--delegate", " ", "{wav}"], "--delegate is empty"),
    ("tag", ["--model", "{onnx}", "--strict", "{wav}"], "--strict apply to an archive"),
    ("tag", ["--model", "{onnx}", "--output", "", "{wav}"], "--output/-o: must not be empty"),
    ("tag", ["--model", "{onnx}", "--output", "{tmp}/o.parquet", "--scheduler", "", "{wav}"],
     "--scheduler: must not be empty"),
    ("tag", ["--model", "{onnx}", "--output", "{tmp}/o.jsonl", "--json", "{wav}"], "leave --json out"),
    ("export", EXPORT + ["--seed", "99999999999999999999999"], "--seed must be between 0 and"),
    ("export", EXPORT + ["--seed", "-1"], "--seed must be between 0 and"),
    ("export", ["--model", "dymn-s", "--weights", "{weights}", "--seed", "3", "--format", "onnx"],
     "--seed seeds --random-init"),
    ("export", EXPORT + ["--no-validate", "--eval-dataset", "{fsdd}"], "leave out --no-validate"),
    ("export", EXPORT + ["--output", ""], "--output/-o: must not be empty"),
    ("export", EXPORT + ["--labels", ""], "--labels: must not be empty"),
    ("export", EXPORT + ["--static-int8", "--calibration", ""], "--calibration: must not be empty"),
    ("info", [""], "MODEL: must not be empty"),
    ("bench", ["--formats", ""], "--formats: must not be empty"),
    ("bench", ["--workdir", ""], "--workdir: must not be empty"),
    ("bench", ["--json", ""], "--json: must not be empty"),
    ("bench", ["--score-file", "{tmp}", "--data", "{fsdd}"], "is a folder"),
    ("bench", ["--max-regression", "5"], "add --compare"),
    ("bench", ["--max-regression", "lots"], "must look like 15%"),
    ("bench", ["--no-accuracy", "--data", "{fsdd}"], "--no-accuracy skips accuracy"),
]


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("battery") / "noise.wav"
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(32000)).astype(np.float32), 32000)
    return path


def _run(tool: str, args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    module, fn = TOOLS[tool]
    main = getattr(importlib.import_module(module), fn)
    capsys.readouterr()
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    return rc, [line for line in err.splitlines() if line.strip()]


@pytest.mark.torch
@pytest.mark.parametrize("tool,argv,expected", CASES, ids=[f"{t}:{' '.join(a)[:50]}" for t, a, _ in CASES])
def test_bad_option_is_one_line_before_any_work(tool: str, argv: list[str], expected: str, wav: Path,
                                                tmp_path: Path, request: pytest.FixtureRequest,
                                                capsys: pytest.CaptureFixture) -> None:
    fill = {"wav": str(wav), "tmp": str(tmp_path), "onnx": "", "tflite": "", "weights": "", "fsdd": ""}
    text = " ".join(argv)
    for fmt in ("onnx", "tflite"):
        if "{" + fmt + "}" in text:
            fill[fmt] = str(request.getfixturevalue("fsdd_export")(fmt).path)
    if "{weights}" in text:
        fill["weights"] = str(require_file(FSDD_WEIGHTS))
    if "{fsdd}" in text:
        fill["fsdd"] = str(require_file(FSDD_DIR))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "dup.csv").write_text("index,display_name\n0,dog\n1,Dog\n")
    onnx_bytes = Path(fill["onnx"]).read_bytes() if fill["onnx"] else b"\x08\x07" * 5000
    (tmp_path / "truncated.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 3])
    args = [a.format(**fill) for a in argv]
    before = sorted(tmp_path.rglob("*"))
    rc, err = _run(tool, args, capsys)
    assert rc == 2, (rc, err)
    assert len(err) == 1 and f"dymn-{tool}: error:" in err[0], err
    assert expected in err[0], err[0]
    assert sorted(tmp_path.rglob("*")) == before  # nothing exported, no partial or probe file


@pytest.mark.torch
def test_bench_exit_code_says_rows_failed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A row that fails (calibration audio that cannot be decoded) is exit 1, not 0; the user
    who tolerates it says --allow-failures. The failed row stays in the table."""
    cal = tmp_path / "calibration"
    cal.mkdir()
    for name in ("a.wav", "b.wav"):
        (cal / name).write_bytes(np.random.default_rng(1).bytes(4000))
    base = ["--model", "dymn-s", "--random-init", "--formats", "onnx:static_int8", "--calibration",
            str(cal), "--lengths", "1", "--threads", "1", "--budget", "0.05", "--no-reference",
            "--quiet", "--workdir", str(tmp_path / "cache"), "--json", str(tmp_path / "b.json")]
    rc, err = _run("bench", base, capsys)
    assert rc == 1 and "1 of 1 rows failed" in err[-1], err
    rc, err = _run("bench", base + ["--allow-failures"], capsys)
    assert rc == 0 and "1 of 1 rows failed" in err[-1] and "exit 1" not in err[-1], err
    import json

    rows = json.loads((tmp_path / "b.json").read_text())["artifacts"]
    assert [r["status"] for r in rows] == ["failed"] and "audio" in rows[0]["error"], rows


def test_labels_with_repeated_names_are_refused(tmp_path: Path) -> None:
    from dymn_edge.errors import LabelsError
    from dymn_edge.labels import read_labels_csv

    ok = tmp_path / "ok.csv"
    ok.write_text("index,display_name,mid\n0,dog,/m/1\n1,cat,/m/2\n")
    assert [lab.display_name for lab in read_labels_csv(ok)] == ["dog", "cat"]
    for body, words in (("0,dog,/m/1\n1,DOG,/m/2\n", "display_name 'DOG' repeats line 2"),
                        ("0,dog,/m/1\n1,cat,/m/1\n", "mid '/m/1' repeats line 2")):
        bad = tmp_path / "bad.csv"
        bad.write_text("index,display_name,mid\n" + body)
        with pytest.raises(LabelsError, match=words):
            read_labels_csv(bad)


@pytest.mark.parametrize("module", ["dymn_edge.runtime.info", "dymn_edge.runtime.device.events_cli"])
def test_closed_stdout_is_one_line(module: str, tmp_path: Path) -> None:
    """``tool >&-``: Python sets sys.stdout to None, so print() dropped the output silently
    (exit 0) and a write was a traceback; now one line and exit 2, before any work."""
    code = f"import sys; from {module} import main; sys.exit(main())"
    proc = subprocess.run(f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} {tmp_path / 'x'} >&-",
                          shell=True, capture_output=False, stderr=subprocess.PIPE, text=True, timeout=120)
    prog = "dymn-info" if module.endswith("info") else "dymn-events"
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"{prog}: error: standard output is closed; redirect it to a file or /dev/null"], proc.stderr
