"""Resumable archive jobs never return stale or partial rows (issue 19, section 1).

``dymn-tag --output`` and ``dymn-bench --score-file`` on real FSDD recordings with the
trained FSDD DyMN-S the project exports: the merged output holds exactly the rows of the
current inputs, a part is reused only for unchanged files with the same model and options,
an output of another model is refused until ``--overwrite``, a finished run leaves no
``.parts/``, an interrupted one resumes, and scheduler / output problems are one line
before any work.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import in_ci
from dymn_edge.runtime.archive import RUN_MANIFEST
from dymn_edge.runtime.cli import tag_main
from dymn_edge.runtime.engines import load_engine
from dymn_edge.runtime.tagger import Tagger

if in_ci():  # under CI a missing cluster extra fails the module instead of skipping it
    import distributed  # noqa: F401
    import pyarrow.parquet as pq
else:
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("distributed")


def _recordings(fsdd_dir: Path, n: int, step: int = 97) -> list[Path]:
    """``n`` FSDD recordings spread over digits and speakers."""
    return sorted((fsdd_dir / "recordings").glob("*.wav"))[::step][:n]


def _manifest(path: Path, files: list[Path]) -> Path:
    path.write_text("".join(f"{f}\n" for f in files))
    return path


def _rows(path: Path) -> dict[str, list]:
    return pq.read_table(path).to_pydict()


def _parts(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _one_error_line(err: str, msg: str) -> None:
    assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def _free_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_three_runs_hold_exactly_the_current_inputs(fsdd_dir: Path, fsdd_tflite: Path, tmp_path: Path,
                                                    capsys) -> None:
    """12 files, then 4 with the same output, then the 12 again: rows of the current run only."""
    rec = _recordings(fsdd_dir, 12)
    big, small = _manifest(tmp_path / "big.txt", rec), _manifest(tmp_path / "small.txt", rec[:4])
    out = tmp_path / "rs.parquet"
    base = ["--model", str(fsdd_tflite), "--output", str(out), "--threads", "1", "--task-size", "3"]
    for manifest, n in [(big, 12), (small, 4), (big, 12)]:
        assert tag_main([*base, str(manifest)]) == 0
        err = capsys.readouterr().err
        assert f"{n} files: {n} done, 0 failed, 0 skipped" in err, err
        assert _rows(out)["file"] == [str(f) for f in rec[:n]]
        assert not _parts(out).exists()  # a finished run removes its parts
    # the identical job again: proven done by the output's run record, nothing rewritten
    before = out.stat().st_mtime_ns
    assert tag_main([*base, str(big)]) == 0
    assert "12 files: 0 done, 0 failed, 12 skipped" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == before and len(_rows(out)["file"]) == 12


def test_interrupted_run_resumes_and_redoes_changed_files(fsdd_dir: Path, fsdd_tflite: Path, fsdd_onnx: Path,
                                                          tmp_path: Path, capsys, child_env) -> None:
    """SIGINT mid-run keeps the parts; a changed file's part is redone on resume, others reused;
    parts of another model or options are refused; a finished output of another model is
    refused until --overwrite."""
    import soundfile as sf

    folder = tmp_path / "audio"
    folder.mkdir()
    src = _recordings(fsdd_dir, 40, step=61)
    files = []
    for i, r in enumerate(src):  # the audio as local files this test may change
        wave, sr = sf.read(r, dtype="float32")
        files.append(folder / f"clip{i:02d}.wav")
        sf.write(files[-1], wave, sr)
    out = tmp_path / "tags.parquet"
    parts = _parts(out)
    base = ["--model", str(fsdd_tflite), "--output", str(out), "--threads", "1", "--task-size", "1"]
    exe = Path(sys.executable).with_name("dymn-tag")
    proc = subprocess.Popen([str(exe), *base, str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("part-*"))) >= 2:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "dymn-tag: interrupted" in err and "parts are kept in" in err and "Traceback" not in err
    kept = len(list(parts.glob("part-*")))
    assert 2 <= kept < 40 and (parts / RUN_MANIFEST).is_file() and not out.exists()

    # parts of another run: refused, one line, nothing touched
    for argv, msg in [([*base, "--top-k", "2"], "unfinished run with other options"),
                      (["--model", str(fsdd_onnx), *base[2:]], "unfinished run with another model file")]:
        assert tag_main([*argv, str(folder)]) == 2
        _one_error_line(capsys.readouterr().err, msg)
    assert len(list(parts.glob("part-*"))) == kept

    # clip00 (in the first part) gets other audio under the same name; a dead run's temporary
    wave, sr = sf.read(fsdd_dir / "recordings" / "7_jackson_0.wav", dtype="float32")
    sf.write(files[0], wave, sr)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    orphan = parts / f".part-0000000-0000000000000000.parquet.{dead}.tmp"
    orphan.write_bytes(b"half a part")
    assert tag_main([*base, str(folder)]) == 0
    err = capsys.readouterr().err
    assert f"40 files: {40 - kept + 1} done, 0 failed, {kept - 1} skipped" in err, err
    assert not parts.exists()
    rows = _rows(out)
    assert rows["file"] == [str(f) for f in files]
    tagger = Tagger(load_engine(fsdd_tflite, threads=1))
    for i in (0, 1, kept, 39):  # the changed file, a reused part, redone ones: the current audio
        ref = tagger.tag_file(files[i])[0]
        assert rows["indices"][i][0] == int(np.argmax(ref.probabilities))
        assert rows["probabilities"][i][0] == ref.probabilities.max()
    assert rows["indices"][0][0] == 7

    # a finished output of another model: refused, then replaced with --overwrite
    other = ["--model", str(fsdd_onnx), *base[2:], str(folder)]
    assert tag_main(other) == 2
    _one_error_line(capsys.readouterr().err, "holds the rows of a run with another model file; --overwrite")
    assert tag_main([*other, "--overwrite"]) == 0
    assert "40 files: 40 done, 0 failed, 0 skipped" in capsys.readouterr().err
    onnx = Tagger(load_engine(fsdd_onnx, threads=1))
    rows = _rows(out)
    assert rows["file"] == [str(f) for f in files]
    for i in (0, 20):
        assert rows["probabilities"][i][0] == onnx.tag_file(files[i])[0].probabilities.max()


def test_outputs_without_a_run_record_are_refused(fsdd_dir: Path, fsdd_tflite: Path, tmp_path: Path,
                                                  capsys) -> None:
    """JSON Lines record no run, and a foreign file is not ours: both need --overwrite."""
    rec = _recordings(fsdd_dir, 3)
    jsonl = tmp_path / "tags.jsonl"
    argv = ["--model", str(fsdd_tflite), "--output", str(jsonl), *map(str, rec)]
    assert tag_main(argv) == 0
    capsys.readouterr()
    assert tag_main(argv) == 2
    _one_error_line(capsys.readouterr().err, "JSON Lines carry no run record")
    assert tag_main([*argv[:4], *map(str, rec[:2]), "--overwrite"]) == 0
    assert len(jsonl.read_text().splitlines()) == 2
    capsys.readouterr()
    foreign = tmp_path / "theirs.parquet"
    foreign.write_bytes(b"not ours")
    assert tag_main(["--model", str(fsdd_tflite), "--output", str(foreign), str(rec[0])]) == 2
    _one_error_line(capsys.readouterr().err, "was not written by dymn-tag --output")
    assert foreign.read_bytes() == b"not ours"


def test_scheduler_and_output_problems_are_one_line_before_any_work(fsdd_dir: Path, fsdd_tflite: Path,
                                                                     tmp_path: Path, capsys) -> None:
    rec = _recordings(fsdd_dir, 2)
    out = tmp_path / "x.parquet"
    port = _free_port()
    (tmp_path / "plain.txt").write_text("a file, not a folder")
    cases = [(["--output", str(out), "--scheduler", "bogus://x"], "unknown scheme 'bogus://'"),
             (["--output", str(out), "--scheduler", "tcp://127.0.0.1"], "expected tcp://HOST:PORT"),
             (["--output", str(out), "--scheduler", f"tcp://127.0.0.1:{port}"],
              f"cannot connect to the Dask scheduler tcp://127.0.0.1:{port}"),
             (["--output", str(out), "--scheduler", f"127.0.0.1:{port}"], "cannot connect to the Dask scheduler"),
             (["--output", "/proc/x.parquet"], "--output /proc/x.parquet: cannot write in /proc"),
             (["--output", str(tmp_path / "plain.txt" / "x.parquet")], "is a file, not a folder")]
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cases.append((["--output", str(ro / "x.parquet")], f"cannot write in {ro}"))
    for argv, msg in cases:
        assert tag_main(["--model", str(fsdd_tflite), *argv, *map(str, rec)]) == 2, argv
        _one_error_line(capsys.readouterr().err, msg)
    # a model file the engine rejects: found before the first part, nothing left behind
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert tag_main(["--model", str(junk), "--output", str(out), *map(str, rec)]) == 2
    _one_error_line(capsys.readouterr().err, "junk.onnx")
    junk.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["plain.txt"] + (["ro"] if os.geteuid() else []))
    # a finished output: an unreachable scheduler still fails (it is contacted before "all done")
    assert tag_main(["--model", str(fsdd_tflite), "--output", str(out), *map(str, rec)]) == 0
    capsys.readouterr()
    assert tag_main(["--model", str(fsdd_tflite), "--output", str(out), "--scheduler",
                     f"tcp://127.0.0.1:{port}", *map(str, rec)]) == 2
    _one_error_line(capsys.readouterr().err, "cannot connect to the Dask scheduler")


def test_bench_score_file_three_runs_on_the_test_split(fsdd_dir: Path, fsdd_tflite: Path, tmp_path: Path,
                                                       capsys) -> None:
    """--score-file on 12, 4, then 12 clips: accuracy of exactly this run's clips, from the
    test split when no --split is given; an unreachable scheduler fails with one line."""
    from dymn_edge.benchmarks.cli import main as bench_main
    from dymn_edge.datasets import load_dataset

    clips = load_dataset(fsdd_dir, split="test").clips
    base = ["--score-file", str(fsdd_tflite), "--data", str(fsdd_dir), "--workdir", str(tmp_path), "--quiet"]
    out = tmp_path / f"{fsdd_tflite.stem}.fsdd-test.parquet"
    for n in (12, 4, 12):
        assert bench_main([*base, "--max-clips", str(n)]) == 0
        text = capsys.readouterr().out
        rows = _rows(out)
        assert rows["file"] == [str(c.path.absolute()) for c in clips[:n]]
        acc = np.mean([int(np.argmax(s)) == c.targets[0] for s, c in zip(rows["scores"], clips[:n])])
        assert "(split test)" in text and f"accuracy {acc:.4f}" in text and f"({n} of {n} clips;" in text
        assert f"{n} files: {n} done, 0 failed, 0 skipped" in text
        assert not _parts(out).exists()
    assert bench_main([*base, "--max-clips", "12", "--scheduler", f"tcp://127.0.0.1:{_free_port()}"]) == 2
    _one_error_line(capsys.readouterr().err, "cannot connect to the Dask scheduler")
    assert bench_main([*base, "--max-clips", "12", "--scheduler", "bogus://x"]) == 2
    _one_error_line(capsys.readouterr().err, "unknown scheme 'bogus://'")
    assert bench_main([*base[:-3], "--workdir", "/proc/x", "--quiet"]) == 2
    _one_error_line(capsys.readouterr().err, "cannot write in /proc/x")


def test_bench_score_file_failed_clip_exits_1(fsdd_dir: Path, fsdd_tflite: Path, tmp_path: Path,
                                              capsys) -> None:
    """A clip that cannot be scored is a failure (exit 1) unless --allow-failures; the
    accuracy counts the scored clips only."""
    from dymn_edge.benchmarks.cli import main as bench_main

    root = tmp_path / "set"
    root.mkdir()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (root / "classes.csv").write_text("index,display_name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    good = _recordings(fsdd_dir, 6, step=211)
    bad = root / "bad.wav"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (root / "labels.csv").write_text("path,label\n" + "".join(f"{g},{g.name.split('_')[0]}\n" for g in good)
                                     + "bad.wav,3\n")
    argv = ["--score-file", str(fsdd_tflite), "--data", str(root), "--workdir", str(tmp_path / "w"), "--quiet"]
    assert bench_main(argv) == 1
    cap = capsys.readouterr()
    assert "(all clips)" in cap.out and "(6 of 7 clips;" in cap.out and "6 done, 1 failed" in cap.out
    assert "1 of 7 clips could not be scored" in cap.err and "--allow-failures tolerates" in cap.err
    rows = _rows(tmp_path / "w" / f"{fsdd_tflite.stem}.set.parquet")
    ok = [s for s, e in zip(rows["scores"], rows["error"]) if e is None]
    acc = np.mean([int(np.argmax(s)) == int(g.name.split("_")[0]) for s, g in zip(ok, good)])
    assert f"accuracy {acc:.4f}" in cap.out
    assert bench_main([*argv, "--allow-failures"]) == 0  # the same job: nothing redone, tolerated
    cap = capsys.readouterr()
    assert "0 done, 0 failed, 7 skipped" in cap.out and "1 of 7 clips could not be scored" in cap.err
