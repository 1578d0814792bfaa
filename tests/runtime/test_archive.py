"""``dymn-tag --output``: archives on one process and on a real Dask LocalCluster.

Real FSDD recordings, the trained FSDD DyMN-S exported to TFLite by the project, real
worker processes. The default suite uses a fixed subset (every 15th of the 3,000
recordings, 200 files, all digits and speakers) plus 3 corrupt files; the full 3,000 run
is the ``slow`` test at the end.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import in_ci
from dymn_edge.runtime.archive import expand_inputs, plan_tasks
from dymn_edge.runtime.cli import tag_main
from dymn_edge.runtime.engines import load_engine
from dymn_edge.runtime.tagger import Tagger

if in_ci():  # under CI a missing cluster extra fails the module instead of skipping it
    import distributed  # noqa: F401
    import pyarrow.parquet as pq
else:
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("distributed")

from distributed.diagnostics.plugin import SchedulerPlugin  # noqa: E402 (after the extra's check)

SUBSET_STEP = 15  # 3000 / 15 = 200 files


def _recordings(fsdd_dir: Path) -> list[Path]:
    rows = list(csv.DictReader((fsdd_dir / "split.csv").open()))
    return sorted(fsdd_dir / r["path"] for r in rows)


def _corrupt_files(folder: Path) -> list[Path]:
    """Three files a real archive holds: random bytes, an empty file, NaN samples."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    garbage, empty, nan = folder / "garbage.wav", folder / "empty.wav", folder / "nan.wav"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    empty.write_bytes(b"")
    wave = np.zeros(8000, np.float32)
    wave[100] = np.nan
    sf.write(nan, wave, 8000, subtype="FLOAT")
    return [garbage, empty, nan]


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory, fsdd_dir: Path) -> tuple[Path, list[Path], list[Path]]:
    """A CSV manifest: 200 FSDD recordings with 3 corrupt files among them."""
    root = tmp_path_factory.mktemp("archive")
    good = _recordings(fsdd_dir)[::SUBSET_STEP]
    bad = _corrupt_files(root / "bad")
    files = good[:50] + [bad[0]] + good[50:120] + [bad[1]] + good[120:] + [bad[2]]
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([str(f), "x"] for f in files)
    return manifest, good, bad


def _dymn_tag() -> str:
    exe = Path(sys.executable).with_name("dymn-tag")
    if not exe.exists():
        pytest.fail(f"dymn-tag console script not found beside {sys.executable}")
    return str(exe)


@pytest.fixture(scope="module")
def local_run(subset, fsdd_tflite: Path, tmp_path_factory: pytest.TempPathFactory):
    """The plain single-process loop (no --workers), full score vectors; error rows tolerated."""
    manifest, _, _ = subset
    out = tmp_path_factory.mktemp("local") / "tags.parquet"
    proc = subprocess.run([_dymn_tag(), "--model", str(fsdd_tflite), "--output", str(out), "--scores",
                           "--threads", "1", "--task-size", "25", "--allow-failures", str(manifest)],
                          capture_output=True, text=True, timeout=600)
    return out, proc


@pytest.fixture(scope="module")
def dask_run(subset, fsdd_tflite: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same through ``--workers 2`` (a real LocalCluster of 2 worker processes)."""
    manifest, _, _ = subset
    out = tmp_path_factory.mktemp("dask") / "tags.parquet"
    proc = subprocess.run([_dymn_tag(), "--model", str(fsdd_tflite), "--output", str(out), "--scores",
                           "--workers", "2", "--task-size", "25", str(manifest)],
                          capture_output=True, text=True, timeout=600)
    return out, proc


def _rows(path: Path) -> dict[str, list]:
    return pq.read_table(path).to_pydict()


# ---------------------------------------------------------------------------------------


def test_inputs_expand_folders_and_manifests(tmp_path: Path, fsdd_dir: Path) -> None:
    rec = _recordings(fsdd_dir)[:3]
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for i, r in enumerate(rec):
        (tmp_path / "a" / ("deep" if i else "") / r.name).write_bytes(r.read_bytes())
    (tmp_path / "a" / "notes.md").write_text("not audio")
    (tmp_path / "list.txt").write_text(f"# comment\n{rec[0]}\n\nrel.flac\n")
    (tmp_path / "noheader.csv").write_text(f"{rec[1]},1\n{rec[2]},2\n")
    found = expand_inputs([tmp_path / "a", tmp_path / "list.txt", tmp_path / "noheader.csv",
                           tmp_path / "a" / rec[0].name])
    names = [p.name for p in found]
    assert sorted(names[:3]) == sorted(r.name for r in rec) and "notes.md" not in names
    # the folder copy of rec[0] is listed twice and kept once; the manifest's own paths stay
    assert found[3] == rec[0] and found[4] == tmp_path / "rel.flac" and found[5:] == rec[1:]
    with pytest.raises(Exception, match="input not found"):
        expand_inputs([tmp_path / "typo.wav"])
    tasks = plan_tasks(found, 4, "fp", "parquet")
    assert [len(t.files) for t in tasks] == [4, 3] and len({t.part for t in tasks}) == 2
    assert plan_tasks(found, 4, "other options", "parquet")[0].part != tasks[0].part


def test_single_process_rows_match_the_tagger(local_run, subset, fsdd_tflite: Path) -> None:
    out, proc = local_run
    assert proc.returncode == 0, proc.stderr
    rows = _rows(out)
    _, good, bad = subset
    ok = [i for i, e in enumerate(rows["error"]) if e is None]
    assert [rows["file"][i] for i in ok] == [str(g) for g in good]  # input order, once each
    tagger = Tagger(load_engine(fsdd_tflite, threads=1))
    for i in ok[::40]:
        ref = tagger.tag_file(rows["file"][i])[0]
        got = np.asarray(rows["scores"][i], np.float32)
        assert np.array_equal(got, ref.probabilities)  # bit-identical, not approximately
        assert rows["indices"][i][0] == int(np.argmax(ref.probabilities))
        assert rows["probabilities"][i][0] == ref.probabilities.max()
        assert rows["end"][i] == pytest.approx(ref.end)
    digits = [int(Path(rows["file"][i]).name.split("_")[0]) for i in ok]
    acc = np.mean([rows["indices"][i][0] == d for i, d in zip(ok, digits)])
    assert acc > 0.9, f"top-1 accuracy {acc:.3f} on the subset"


def test_dask_cluster_rows_are_bit_identical(local_run, dask_run) -> None:
    (local_out, _), (dask_out, dask_proc) = local_run, dask_run
    assert dask_proc.returncode == 1, dask_proc.stderr  # 3 error rows, not tolerated
    a, b = _rows(local_out), _rows(dask_out)
    assert a["file"] == b["file"]
    assert a == b  # every column, float32 scores compared exactly
    assert "200 done, 3 failed, 0 skipped" in dask_proc.stderr


def _copy_of(out: Path, tmp_path: Path) -> Path:
    """The shared run's output copied (mtime kept): a test that re-runs a job works on its
    own file, never on the module's fixture other tests read."""
    return Path(shutil.copy2(out, tmp_path / out.name))


def test_corrupt_files_are_error_rows_and_strict_fails(dask_run, subset, fsdd_tflite: Path, capsys,
                                                       tmp_path: Path) -> None:
    shared, proc = dask_run
    out = _copy_of(shared, tmp_path)
    _, _, bad = subset
    rows = _rows(out)
    errors = {f: e for f, e in zip(rows["file"], rows["error"]) if e is not None}
    assert sorted(errors) == sorted(str(b) for b in bad)
    assert "cannot decode" in errors[str(bad[1])] and "non-finite" in errors[str(bad[2])]
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1 and "error: 3 files could not be tagged" in proc.stderr
    assert "--allow-failures tolerates them" in proc.stderr
    # the identical job again: nothing to do (the output's run record matches), same verdict;
    # --allow-failures makes it a warning and exit 0, --strict overrides that
    for flags, code, word in [([], 1, "error"), (["--allow-failures"], 0, "warning"),
                              (["--allow-failures", "--strict"], 1, "error")]:
        rc = tag_main(["--model", str(fsdd_tflite), "--output", str(out), "--scores", "--task-size", "25",
                       *flags, str(subset[0])])
        err = capsys.readouterr().err
        assert rc == code and "0 done, 0 failed, 203 skipped" in err, err
        assert f"{word}: 3 files could not be tagged" in err


def test_rerun_with_same_output_does_no_work(dask_run, subset, fsdd_tflite: Path, capsys, tmp_path: Path) -> None:
    """A finished run leaves no parts; re-running it contacts its scheduler, then does nothing."""
    shared, _ = dask_run
    assert not shared.with_name(shared.name + ".parts").exists()  # removed after the merge
    out = _copy_of(shared, tmp_path)
    before = out.stat().st_mtime_ns
    argv = ["--model", str(fsdd_tflite), "--output", str(out), "--scores", "--task-size", "25",
            "--allow-failures", str(subset[0])]
    # a scheduler that does not exist: one line and a failure, even with nothing to do
    assert tag_main([*argv, "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to the Dask scheduler tcp://127.0.0.1:9" in err and len(err.strip().splitlines()) == 1
    assert tag_main(argv) == 0
    err = capsys.readouterr().err
    assert "203 files: 0 done, 0 failed, 203 skipped" in err
    assert out.stat().st_mtime_ns == before


class _KillOnFirstPart(SchedulerPlugin):
    """Scheduler plugin: when the first task finishes and another is running on a worker,
    SIGKILL that worker (``both``: every worker, so that a task surely fails)."""

    def __init__(self, scheduler, pids: dict[str, int], *, both: bool) -> None:
        self.scheduler, self.pids, self.both = scheduler, pids, both
        self.killed: list[int] = []
        self.finished_before = 0

    def transition(self, key, start: str, finish: str, *args, **kwargs) -> None:
        if finish != "memory" or self.killed or start != "processing":
            return
        self.finished_before += 1
        busy = [addr for addr, ws in self.scheduler.workers.items() if ws.processing and addr in self.pids]
        if not busy:
            return
        victims = list(self.pids) if self.both else busy[:1]
        self.killed = [self.pids[busy[0]]]
        for addr in victims:
            os.kill(self.pids[addr], signal.SIGKILL)


@pytest.mark.parametrize("allowed_failures", [3, 0], ids=["scheduler-retries", "split-file-by-file"])
def test_worker_killed_mid_run_every_file_once(local_run, subset, fsdd_tflite: Path, tmp_path: Path,
                                               capsys, caplog, allowed_failures: int) -> None:
    """SIGKILL a busy worker when the first part lands; the job still has every file once.

    With Dask's default the scheduler re-runs the dead worker's tasks; with
    ``allowed-failures=0`` those tasks fail (as a file that crashes its worker would make
    them) and the job re-runs them one file at a time.
    """
    import dask
    from distributed import Client, LocalCluster

    out = tmp_path / "killed.parquet"
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = client.run(os.getpid)
        assert len(pids) == 2
        # the kill happens in the scheduler, in the transition that finishes the first part
        # while another task runs: mid-run by construction, no polling
        killer = _KillOnFirstPart(cluster.scheduler, pids, both=not allowed_failures)
        cluster.scheduler.add_plugin(killer, name="kill-on-first-part")
        with caplog.at_level("WARNING", logger="dymn_edge.runtime.archive"):
            rc = tag_main(["--model", str(fsdd_tflite), "--output", str(out), "--scores", "--task-size", "5",
                           "--allow-failures", "--scheduler", cluster.scheduler_address, str(subset[0])])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert killer.killed and killer.finished_before == 1, (killer.killed, killer.finished_before)
        assert killer.killed[0] not in client.run(os.getpid).values()
    assert ("retrying file by file" in caplog.text) == (allowed_failures == 0), caplog.text
    a, b = _rows(local_run[0]), _rows(out)
    assert b["file"] == a["file"]  # every file exactly once, in input order
    assert b == a
    assert "200 done, 3 failed, 0 skipped" in err


def test_jsonl_output_and_bad_arguments(local_run, subset, fsdd_tflite: Path, tmp_path: Path, capsys) -> None:
    manifest, good, bad = subset
    lst = tmp_path / "few.txt"
    lst.write_text("\n".join(str(p) for p in good[:6] + [bad[0]]) + "\n")
    out = tmp_path / "tags.jsonl"
    assert tag_main(["--model", str(fsdd_tflite), "--output", str(out), "--top-k", "2", str(lst)]) == 1
    import json

    objs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [o["file"] for o in objs] == [str(p) for p in good[:6] + [bad[0]]]
    assert "error" in objs[-1] and "tags" not in objs[-1]
    ref = _rows(local_run[0])
    by_file = {f: p for f, p in zip(ref["file"], ref["probabilities"])}
    for o in objs[:-1]:
        assert len(o["tags"]) == 2
        assert o["tags"][0]["probability"] == pytest.approx(by_file[o["file"]][0], abs=1e-6)
    capsys.readouterr()
    for argv, msg in [(["--workers", "2", str(lst)], "add --output"),
                      (["--output", str(tmp_path / "x.csv"), str(lst)], "must end in .parquet or .jsonl"),
                      (["--output", str(tmp_path / "x.parquet"), str(tmp_path / "nope.wav")], "input not found"),
                      (["--output", str(tmp_path / "x.parquet"), "--workers", "0", str(lst)], "--workers must be"),
                      (["--output", str(tmp_path / "x.parquet"), "--task-size", "0", str(lst)], "--task-size")]:
        assert tag_main(["--model", str(fsdd_tflite), *argv]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_embeddings_per_window(subset, fsdd_tflite: Path, metro_wav: Path, tmp_path: Path) -> None:
    _, good, _ = subset
    tagger = Tagger(load_engine(fsdd_tflite, threads=1))
    out = tmp_path / "emb.parquet"
    assert tag_main(["--model", str(fsdd_tflite), "--output", str(out), "--embeddings", "--threads", "1",
                     str(good[0]), str(metro_wav)]) == 1  # the metro file is an error row
    rows = _rows(out)
    ref = tagger.tag_file(good[0])[0]
    assert np.array_equal(np.asarray(rows["embedding"][0], np.float32), ref.embedding)
    # a 10 s file scored whole by a 1 s model averages windows: no single embedding to give
    assert rows["file"][1] == str(metro_wav) and "add --window" in rows["error"][1]
    out2 = tmp_path / "emb_windows.parquet"
    assert tag_main(["--model", str(fsdd_tflite), "--output", str(out2), "--embeddings", "--threads", "1",
                     "--window", "1", "--hop", "1", str(metro_wav)]) == 0
    rows = _rows(out2)
    assert len(rows["file"]) == 10 and all(e is None for e in rows["error"])
    assert {len(e) for e in rows["embedding"]} == {ref.embedding.size}


def test_archive_module_stays_light() -> None:
    """The runtime install without the cluster extra: no torch, and Dask only when used."""
    code = ("import sys, dymn_edge.runtime.archive; heavy = [m for m in ('torch', 'distributed', 'dask', "
            "'pyarrow') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-500:]


def test_bench_scores_a_file_through_the_archive_path(fsdd_dir: Path, fsdd_tflite: Path, tmp_path: Path,
                                                     capsys) -> None:
    """``dymn-bench --score-file M --data D``: accuracy / mAP from the archive's score vectors."""
    from dymn_edge.benchmarks.cli import main as bench_main
    from dymn_edge.datasets import load_dataset

    rc = bench_main(["--score-file", str(fsdd_tflite), "--data", str(fsdd_dir), "--split", "test",
                     "--max-clips", "60", "--workdir", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = _rows(tmp_path / f"{fsdd_tflite.stem}.fsdd-test.parquet")
    clips = load_dataset(fsdd_dir, split="test").clips[:60]
    assert rows["file"] == [str(c.path.absolute()) for c in clips]
    acc = np.mean([int(np.argmax(s)) == c.targets[0] for s, c in zip(rows["scores"], clips)])
    assert acc >= 0.85 and f"accuracy {acc:.4f}" in out and "60 of 60 clips" in out


@pytest.mark.slow
def test_full_fsdd_on_two_workers_matches_single_process(fsdd_dir: Path, fsdd_tflite: Path,
                                                         tmp_path: Path) -> None:
    """All 3,000 recordings: the folder as input, 2 workers vs the plain loop, bit-identical."""
    runs = {}
    for name, extra in [("local", ["--threads", "1"]), ("dask", ["--workers", "2"])]:
        out = tmp_path / f"{name}.parquet"
        proc = subprocess.run([_dymn_tag(), "--model", str(fsdd_tflite), "--output", str(out),
                               "--scores", *extra, str(fsdd_dir / "recordings")],
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr
        assert "3000 done, 0 failed, 0 skipped" in proc.stderr
        runs[name] = _rows(out)
    assert len(runs["local"]["file"]) == 3000 and len(set(runs["local"]["file"])) == 3000
    assert runs["local"] == runs["dask"]
