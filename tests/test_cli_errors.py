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


# -- one scaffold: the same exit code for the same outcome in every tool, --verbose or not ----

TOOLS = {
    "export": ("dymn_edge.export.cli", "main", ["--model", "dymn-ss", "--format", "onnx", "--random-init"]),
    "tag": ("dymn_edge.runtime.cli", "tag_main", ["--model", "{tmp}/missing.onnx", "{tmp}/a.wav"]),
    "listen": ("dymn_edge.runtime.cli", "listen_main", ["--model", "{tmp}/missing.onnx"]),
    "bench": ("dymn_edge.benchmarks.cli", "main", ["--compare", "{tmp}/missing.json"]),
    "events": ("dymn_edge.runtime.device.events_cli", "main", ["{tmp}/missing.db"]),
    "info": ("dymn_edge.runtime.info", "main", ["{tmp}/missing.onnx"]),
}


@pytest.mark.parametrize("verbose", [False, True], ids=["plain", "verbose"])
@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_user_error_is_exit_2_with_or_without_verbose(tool: str, verbose: bool, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    import importlib

    module, fn, argv = TOOLS[tool]
    main = getattr(importlib.import_module(module), fn)
    args = [a.format(tmp=tmp_path) for a in argv] + (["--verbose"] if verbose else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith(f"dymn-{tool}: error:"), err
    if not verbose:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_scaffold_exit_code_table(capsys: pytest.CaptureFixture) -> None:
    from dymn_edge.cliutil import (
        EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run_guarded,
    )
    from dymn_edge.errors import AudioError, ValidationError

    def raises(exc: BaseException):
        def body() -> int:
            raise exc
        return body

    assert (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED) == (0, 1, 2, 130)
    assert run_guarded(lambda: 0, "t") == 0 and run_guarded(lambda: 1, "t") == 1
    assert run_guarded(raises(ValidationError("file differs")), "t") == 1
    assert run_guarded(raises(AudioError("x.wav: no samples")), "t", verbose=True) == 2
    assert run_guarded(raises(KeyboardInterrupt()), "t") == 130
    assert run_guarded(raises(BrokenPipeError()), "t") == 0
    err = capsys.readouterr().err.splitlines()
    assert "t: error: file differs" in err and "t: interrupted" in err
    with pytest.raises(RuntimeError):  # a bug is not a user error: it is not swallowed
        run_guarded(raises(RuntimeError("bug")), "t")


def test_export_validation_failure_is_exit_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """dymn-export: a file that fails validation (ValidationError from export_model) exits 1."""
    from dymn_edge.errors import ValidationError
    from dymn_edge.export import cli
    from dymn_edge.export.cli import main

    def failing_export(cfg, progress=True):
        raise ValidationError(f"validation failed: logits differ (the file is kept for inspection "
                              f"as {cfg.output_path('dymn-s')})")

    monkeypatch.setattr(cli, "export_model", failing_export)  # the name dymn-export calls
    rc = main(["--model", "dymn-s", "--random-init", "--format", "onnx", "--output", str(tmp_path) + "/"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("dymn-export: error: validation failed")


def test_interrupt_is_exit_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C inside a tool: one 'interrupted' line and 130 (dymn-info, dymn-bench)."""
    from dymn_edge.benchmarks import cli as bench_cli
    from dymn_edge.runtime import info

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "read_metadata", interrupted)
    monkeypatch.setattr(bench_cli, "_print_macs", interrupted)
    assert info.main([str(tmp_path / "m.onnx")]) == 130
    assert bench_cli.main(["--macs"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dymn-info: interrupted", "dymn-bench: interrupted"]
