"""The device parts one by one, on real files: per-label thresholds, the SQLite log and
dymn-events, FLAC clips and their retention, the clean-stop path through a real Listener,
and the systemd unit (the torch-free imports: tests/test_torch_free.py)."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dymn_edge.labels import Label
from dymn_edge.runtime.device.clips import ClipRecorder, apply_retention, clip_files
from dymn_edge.runtime.device.eventlog import SCHEMA_VERSION, EventLog, EventLogError, file_sha256, open_readonly
from dymn_edge.runtime.events import Event, EventConfig, EventTracker
from dymn_edge.runtime.device.events_cli import main as events_main
from dymn_edge.runtime.device.events_cli import parse_time
from dymn_edge.runtime.device.thresholds import ThresholdsError, load_thresholds

LABELS = [Label(0, "/m/0bt9lr", "Dog"), Label(1, "/m/03kmc9", "Siren"), Label(2, "/m/09x0r", "Speech")]
SR = 32000



# -- thresholds ------------------------------------------------------------------------------


def test_thresholds_csv_and_toml_by_name_or_mid(tmp_path: Path) -> None:
    cfg = EventConfig(on=0.5, off=0.3, min_duration=0.0)
    c = tmp_path / "t.csv"
    c.write_text("# per-label\nlabel,on,off,min_duration\ndog,0.4,0.25,0.5\n/m/03kmc9,0.2,,\n")
    t = tmp_path / "t.toml"
    t.write_text('["Dog"]\non = 0.4\noff = 0.25\nmin_duration = 0.5\n\n["/m/03kmc9"]\non = 0.2\n')
    for path in (c, t):
        arr = load_thresholds(path, LABELS, cfg)
        np.testing.assert_allclose(arr, [[0.4, 0.25, 0.5], [0.2, 0.2, 0.0], [0.5, 0.3, 0.0]])


@pytest.mark.parametrize("text,suffix,msg", [
    ("label,on\nDgo,0.4\n", ".csv", r"unknown label 'Dgo'.*Did you mean 'Dog'"),
    ('["Sirens"]\non = 0.3\n', ".toml", r"unknown label 'Sirens'"),
    ("label,on,off\nDog,0.4,0.6\n", ".csv", r"off must be in \[0, on=0.4\]"),
    ("label,on,color\nDog,0.4,red\n", ".csv", r"unknown column\(s\) color"),
    ("label,on\nDog,high\n", ".csv", "must be numbers"),
    ("label,on\nDog,0.4\ndog,0.5\n", ".csv", "already set"),
    ('["Dog"]\nonn = 0.3\n', ".toml", r"unknown key\(s\) onn"),
    ("on = 0.3\n", ".toml", "must be a table"),
])
def test_thresholds_errors_are_clear(tmp_path: Path, text: str, suffix: str, msg: str) -> None:
    f = tmp_path / f"t{suffix}"
    f.write_text(text)
    with pytest.raises(ThresholdsError, match=msg):
        load_thresholds(f, LABELS, EventConfig())


def test_per_label_thresholds_change_events() -> None:
    per = np.array([[0.8, 0.5, 0.0], [0.2, 0.1, 0.0], [0.5, 0.3, 1.5]])
    tr = EventTracker(LABELS, EventConfig(smoothing="none"), hop_s=1.0, per_label=per)
    seq = [[0.6, 0.25, 0.9], [0.6, 0.25, 0.9], [0.0, 0.0, 0.0]]
    out = [e for k, p in enumerate(seq, start=1) for e in tr.update(float(k), np.array(p))]
    # Dog 0.6 < its 0.8; Siren 0.25 >= its 0.2; Speech lasts 2 s >= its 1.5 s minimum
    assert [(e.kind, e.label.display_name) for e in out] == [("start", "Siren"), ("start", "Speech"),
                                                             ("end", "Siren"), ("end", "Speech")]
    assert out[2].mean == pytest.approx(0.25) and out[3].mean == pytest.approx(0.9)


def test_listen_unknown_threshold_label_is_one_line_error(fsdd_onnx: Path, tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text("label,on\ntree,0.5\n")
    proc = subprocess.run([sys.executable, "-c", "import sys; from dymn_edge.runtime.cli import listen_main; "
                           "sys.exit(listen_main())", "--model", str(fsdd_onnx), "--thresholds", str(f)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr
    assert err[0].startswith("dymn-listen: error: ") and "unknown label 'tree'" in err[0] and "'three'" in err[0]


# -- event log and dymn-events -----------------------------------------------------------------


def _end(i: int, start: float, end: float, t0: float, peak: float = 0.9, clip: str | None = None,
         raw: float = 0.99) -> Event:
    return Event("end", LABELS[i], start, end, peak, peak - 0.1, start_utc=t0 + start, end_utc=t0 + end, clip=clip,
                 peak_raw=raw)


def _filled_db(tmp_path: Path) -> tuple[Path, float]:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really a model, but hashed")
    db = tmp_path / "sub" / "events.db"
    t0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z
    log = EventLog(db, model=model, device="0: USB mic")
    log.event(Event("start", LABELS[0], 1.0, None, 0.7))  # onsets are not rows
    log.event(_end(0, 1.0, 2.5, t0))
    log.event(_end(1, 3.0, 3.5, t0, peak=0.6, raw=0.65))
    log.reopen()  # SIGHUP
    log.event(_end(0, 4000.0, 4001.0, t0, clip="/c/x.flac"))  # an hour later
    assert log.close() == {"db_events": 3}
    return db, t0


def test_event_log_rows_schema_and_wal(tmp_path: Path) -> None:
    db, t0 = _filled_db(tmp_path)
    conn = open_readonly(db)
    rows = [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id")]
    assert [tuple(r) for r in conn.execute("SELECT version FROM schema_version")] == [(SCHEMA_VERSION,)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert [(r["label"], r["mid"], r["start_s"], r["end_s"], r["duration_s"]) for r in rows] == [
        ("Dog", "/m/0bt9lr", 1.0, 2.5, 1.5), ("Siren", "/m/03kmc9", 3.0, 3.5, 0.5),
        ("Dog", "/m/0bt9lr", 4000.0, 4001.0, 1.0)]
    assert rows[0]["start_utc"] == "2026-05-28T20:26:41.000Z" and rows[0]["end_utc"] == "2026-05-28T20:26:42.500Z"
    assert rows[0]["model_sha256"] == file_sha256(tmp_path / "m.onnx") and rows[0]["device"] == "0: USB mic"
    assert rows[0]["peak_raw_prob"] == pytest.approx(0.99) and rows[0]["peak_smoothed_prob"] == pytest.approx(0.9)
    assert rows[0]["mean_prob"] == pytest.approx(0.8)
    assert rows[2]["clip"] == "/c/x.flac" and rows[0]["clip"] is None


def test_raw_099_window_is_stored_as_099_beside_its_smoothed_peak(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """One 0.99 window after silence, ema 0.7: the log says 0.99 raw and 0.693 smoothed, named so."""
    tracker = EventTracker(LABELS, EventConfig(on=0.5, off=0.3, smoothing="ema", alpha=0.7))
    db = tmp_path / "e.db"
    log = EventLog(db, device="test")
    for k, p in enumerate([0.0, 0.99, 0.0, 0.0], start=1):
        for ev in tracker.update(float(k), np.array([p, 0.0, 0.0])):
            ev.start_utc, ev.end_utc = 1_780_000_000.0 + ev.start, 1_780_000_000.0 + (ev.end or ev.start)
            log.event(ev)
    log.close()
    assert events_main([str(db), "--format", "jsonl"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and "peak_prob" not in rows[0]
    assert rows[0]["peak_raw_prob"] == pytest.approx(0.99) and rows[0]["peak_smoothed_prob"] == pytest.approx(0.693)
    assert events_main([str(db), "--min-prob", "0.9", "--format", "jsonl"]) == 0  # the raw peak counts
    assert len(capsys.readouterr().out.splitlines()) == 1


#: The events table of schema 1 (dymn-edge before the raw peak), to test the migration.
_SCHEMA_1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT NOT NULL, mid TEXT,
    label_index INTEGER NOT NULL, start_utc TEXT NOT NULL, end_utc TEXT NOT NULL, start_s REAL NOT NULL,
    end_s REAL NOT NULL, duration_s REAL NOT NULL, peak_prob REAL NOT NULL, mean_prob REAL, model TEXT,
    model_sha256 TEXT, device TEXT, host TEXT, clip TEXT, recorded_utc TEXT NOT NULL);
INSERT INTO events (label, mid, label_index, start_utc, end_utc, start_s, end_s, duration_s, peak_prob,
    mean_prob, recorded_utc) VALUES ('Dog', '/m/0bt9lr', 0, '2026-05-01T00:00:00.000Z',
    '2026-05-01T00:00:01.000Z', 0, 1, 1, 0.7, 0.6, '2026-05-01T00:00:01.000Z');
"""


def test_schema_1_file_is_read_then_migrated(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.executescript(_SCHEMA_1)
    assert events_main([str(db), "--format", "jsonl"]) == 0  # read as schema 2, nothing written
    old = json.loads(capsys.readouterr().out)
    assert (old["peak_raw_prob"], old["peak_smoothed_prob"], old["mean_prob"]) == (None, 0.7, 0.6)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    log = EventLog(db)  # the writer migrates
    log.event(_end(1, 3.0, 3.5, 1_780_000_000.0, peak=0.6, raw=0.97))
    log.close()
    assert events_main([str(db), "--format", "jsonl"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["label"], r["peak_raw_prob"], r["peak_smoothed_prob"]) for r in rows] == [
        ("Dog", None, 0.7), ("Siren", 0.97, 0.6)]
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert events_main([str(db), "--min-prob", "0.65", "--format", "jsonl"]) == 0  # old row: its smoothed peak
    assert [json.loads(x)["label"] for x in capsys.readouterr().out.splitlines()] == ["Dog", "Siren"]


def test_event_log_refuses_newer_schema_and_foreign_files(tmp_path: Path) -> None:
    db, _ = _filled_db(tmp_path)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(EventLogError, match="newer than this dymn-edge"):
        EventLog(db)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(EventLogError, match="not a dymn-edge event database"):
        open_readonly(other)
    with pytest.raises(EventLogError, match="cannot open event database"):
        EventLog(other / "sub" / "e.db")  # a folder that cannot exist (other is a file)


def test_dymn_events_list_filter_export_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db, _ = _filled_db(tmp_path)
    assert events_main([str(db)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["id", "start_utc", "duration_s", "label", "peak_raw_prob", "peak_smoothed_prob",
                                "mean_prob", "clip"]
    assert len(table) == 4
    assert events_main([str(db), "--label", "dog", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["start_s"] for r in rows] == ["1.0", "4000.0"] and rows[0]["model_sha256"]
    assert events_main([str(db), "--format", "jsonl", "--min-prob", "0.7", "--since",
                        "2026-05-28T20:30", "--newest-first"]) == 0
    objs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(o["label"], o["start_s"]) for o in objs] == [("Dog", 4000.0)]
    assert events_main([str(db), "--format", "jsonl", "--min-prob", "0.95"]) == 0  # on the raw peak
    objs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(o["label"], o["peak_raw_prob"]) for o in objs] == [("Dog", 0.99), ("Dog", 0.99)]
    assert events_main([str(db), "--summary", "--format", "jsonl"]) == 0
    summ = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert summ == [
        {"hour_utc": "2026-05-28T20:00Z", "label": "Dog", "events": 1, "total_s": 1.5, "max_peak_raw_prob": 0.99,
         "max_peak_smoothed_prob": 0.9, "mean_prob": 0.8},
        {"hour_utc": "2026-05-28T20:00Z", "label": "Siren", "events": 1, "total_s": 0.5, "max_peak_raw_prob": 0.65,
         "max_peak_smoothed_prob": 0.6, "mean_prob": 0.5},
        {"hour_utc": "2026-05-28T21:00Z", "label": "Dog", "events": 1, "total_s": 1.0, "max_peak_raw_prob": 0.99,
         "max_peak_smoothed_prob": 0.9, "mean_prob": 0.8}]


def test_dymn_events_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert events_main([str(tmp_path / "none.db")]) == 2
    assert capsys.readouterr().err.strip() == f"dymn-events: error: event database not found: {tmp_path / 'none.db'}"
    db, _ = _filled_db(tmp_path)
    assert events_main([str(db), "--since", "yesterday-ish"]) == 2
    assert capsys.readouterr().err.strip().startswith("dymn-events: error: not a time: 'yesterday-ish'")
    assert parse_time("2h")[:2] == "20" and parse_time("2026-05-01") == "2026-05-01T00:00:00.000Z"


# -- clips --------------------------------------------------------------------------------------


def _feed(rec: ClipRecorder, audio: np.ndarray, chunk: int = 3200) -> None:
    for k in range(0, audio.size, chunk):
        rec.audio(audio[k:k + chunk], (k + min(chunk, audio.size - k)) / SR)


def test_clip_holds_event_with_padding_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    audio = (rng.uniform(-0.5, 0.5, 6 * SR)).astype(np.float32)
    rec = ClipRecorder(tmp_path / "clips", pre=0.5, post=0.25)
    _feed(rec, audio[:int(2.1 * SR)])
    ev = _end(2, 1.0, 2.0, 1_780_000_000.0)
    rec.event(ev)  # the post padding has not arrived yet: written once it has
    assert ev.clip is not None and not Path(ev.clip).exists()
    for k in range(int(2.1 * SR), 4 * SR, 3200):
        rec.audio(audio[k:k + 3200], (k + 3200) / SR)
    assert Path(ev.clip).is_file()
    assert Path(ev.clip).name == "20260528T202641.000Z_Speech.flac" and Path(ev.clip).parent.name == "2026-05-28"
    got, sr = sf.read(ev.clip, dtype="float32")
    assert sr == SR and got.size == int(1.75 * SR)
    np.testing.assert_allclose(got, audio[int(0.5 * SR):int(2.25 * SR)], atol=1 / 32767)  # 16-bit FLAC
    assert rec.close() == {"clips_written": 1, "clips_deleted": 0}


def test_clip_of_event_closed_at_stop_is_written_with_what_there_is(tmp_path: Path) -> None:
    rec = ClipRecorder(tmp_path, pre=1.0, post=1.0)
    _feed(rec, np.full(2 * SR, 0.25, np.float32))
    ev = _end(0, 1.5, 2.0, 1_780_000_000.0)
    rec.event(ev)
    assert rec.close()["clips_written"] == 1
    assert sf.info(ev.clip).frames == int(1.5 * SR)  # 0.5 s .. 2.0 s: no post padding arrived


def _touch_clip(root: Path, stamp: str, size: int) -> Path:
    p = root / f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}" / f"{stamp}Z_Dog.flac"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\0" * size)
    return p


def test_retention_deletes_oldest_first_and_only_clips(tmp_path: Path) -> None:
    stamps = ["20260101T000000.000", "20260102T000000.000", "20260103T000000.000", "20260104T120000.000"]
    paths = [_touch_clip(tmp_path, s, 400_000) for s in stamps]
    for p in paths[:2]:  # the dashboard's cached spectrograms
        p.with_suffix(".png").write_bytes(b"png")
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    deleted = apply_retention(tmp_path, max_bytes=1_000_000, max_days=None)
    assert deleted == paths[:2]  # oldest first, down to <= 1 MB
    assert not any(p.with_suffix(".png").exists() for p in paths[:2])  # spectrograms go with their clip
    assert [p for _, p, _ in clip_files(tmp_path)] == paths[2:] and mine.exists()
    assert not (tmp_path / "2026-01-01").exists()  # emptied day folders go too
    now = 1767571200.0  # 2026-01-05T00:00Z
    assert apply_retention(tmp_path, max_bytes=None, max_days=1.0, now=now) == [paths[2]]
    assert apply_retention(tmp_path, max_bytes=1, max_days=None, keep=paths[3]) == []  # newest kept


def test_recorder_applies_retention_under_tiny_limit(tmp_path: Path) -> None:
    rec = ClipRecorder(tmp_path, pre=0.0, post=0.0, max_mb=0.15)
    rng = np.random.default_rng(1)
    _feed(rec, rng.uniform(-0.5, 0.5, 8 * SR).astype(np.float32))
    evs = [_end(0, float(k), k + 1.0, 1_780_000_000.0) for k in range(0, 8, 2)]  # 4 noisy 1 s clips ~ 60 kB
    for ev in evs:
        rec.event(ev)
    counters = rec.close()
    left = [p for _, p, _ in clip_files(tmp_path)]
    assert counters["clips_written"] == 4 and counters["clips_deleted"] == len(evs) - len(left) > 0
    assert left == [Path(e.clip) for e in evs[-len(left):]]  # the newest survive
    assert sum(p.stat().st_size for p in left) <= 150_000


def test_free_space_floor_stops_clips_and_says_so_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rec = ClipRecorder(tmp_path, min_free_mb=1e12)  # more than any disk
    _feed(rec, np.zeros(3 * SR, np.float32))
    with caplog.at_level(logging.WARNING, logger="dymn_edge.runtime.device.clips"):
        for k in range(3):
            ev = _end(0, 0.5, 1.0, 1_780_000_000.0 + k)
            rec.event(ev)
            assert ev.clip is None
    assert len([r for r in caplog.records if "not writing clips" in r.message]) == 1
    assert rec.close() == {"clips_written": 0, "clips_deleted": 0, "clips_skipped_low_space": 3}
    assert clip_files(tmp_path) == []


# -- the listener's clean stop, with a real model ------------------------------------------


def test_clean_stop_closes_open_event_into_db_and_clip(fsdd_onnx: Path, fsdd_dir: Path, tmp_path: Path) -> None:
    from dymn_edge.audio import read_audio
    from dymn_edge.runtime.engines import load_engine
    from dymn_edge.runtime.microphone import Listener
    from dymn_edge.runtime.sinks import SinkSet
    from dymn_edge.runtime.stream import StreamingScorer
    from dymn_edge.runtime.tagger import Tagger

    tagger = Tagger(load_engine(fsdd_onnx, threads=1))
    sinks = SinkSet([ClipRecorder(tmp_path / "clips"), EventLog(tmp_path / "e.db", model=fsdd_onnx, device="test")])
    lis = Listener(StreamingScorer(tagger, 1.0, 0.25),
                   EventTracker(tagger.labels, EventConfig(on=0.8, off=0.5), 0.25), sinks=sinks)
    digit = read_audio(fsdd_dir / "recordings" / "5_jackson_0.wav", SR)
    # the stream stops 0.5 s after the digit, while its event is still open (the window holds it)
    audio = np.concatenate([np.zeros(SR, np.float32), digit, np.zeros(SR // 2, np.float32)])
    for k in range(0, audio.size, 1600):
        lis._consume(audio[k:k + 1600], None)
    assert [lab.display_name for lab in lis.tracker.active] == ["five"]  # still sounding at the stop
    closed = lis.finish()
    assert [(e.kind, e.label.display_name) for e in closed] == [("end", "five")]
    assert lis.stats.extra == {"clips_written": 1, "clips_deleted": 0, "db_events": 1}
    conn = open_readonly(tmp_path / "e.db")
    row = dict(conn.execute("SELECT * FROM events").fetchone())
    conn.close()
    assert row["label"] == "five" and Path(row["clip"]).is_file() and row["end_s"] == closed[0].end
    assert "db events 1" in lis.stats.summary()


# -- service unit, imports ---------------------------------------------------------------------


def test_print_systemd_unit(fsdd_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    """The unit is printed after the checks a start runs, creates nothing, and holds no secret:
    the MQTT password stays in the 0600 env file the unit names as EnvironmentFile=."""
    from dymn_edge.runtime.cli import listen_main

    monkeypatch.chdir(tmp_path)
    shutil.copy(fsdd_onnx, tmp_path / "m.onnx")
    env = tmp_path / "mqtt.env"
    env.write_text("# broker secret\nDYMN_EDGE_MQTT_PASSWORD='p@ss%word'\n")
    env.chmod(0o600)
    argv = ["--model", "m.onnx", "--db=events.db", "--clips", "c lips", "--mqtt", "mqtt://u@h/x",
            "--env-file", "mqtt.env", "--print-systemd-unit"]
    assert listen_main(argv) == 0, capsys.readouterr().err
    unit = capsys.readouterr().out
    exec_line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    assert f"--model {tmp_path / 'm.onnx'}" in exec_line and f"--db={tmp_path / 'events.db'}" in exec_line
    assert f'"{tmp_path / "c lips"}"' in exec_line and "mqtt://u@h/x" in exec_line  # systemd quoting
    assert "--print-systemd-unit" not in exec_line and "--env-file" not in exec_line
    assert f"EnvironmentFile={env}" in unit.splitlines() and "p@ss" not in unit
    for line in ("Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM",
                 "WantedBy=multi-user.target", "[Service]"):
        assert line in unit.splitlines()
    assert not (tmp_path / "events.db").exists() and not (tmp_path / "c lips").exists()  # checked, not created
    # a password in the URL would be world-readable in the unit: refused
    assert listen_main(["--model", "m.onnx", "--mqtt", "mqtt://u:p%40ss@h/x", "--print-systemd-unit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a password" in err[0] and "--env-file" in err[0]
    # the service sees its EnvironmentFile only: a password in this shell's environment does not count
    monkeypatch.setenv("DYMN_EDGE_MQTT_PASSWORD", "from-the-shell")
    env.write_text("OTHER=1\n")
    with caplog.at_level(logging.WARNING, logger="dymn_edge.runtime.device.options"):
        assert listen_main(argv) == 0
    assert "from-the-shell" not in capsys.readouterr().out
    assert any("connects without a password" in r.message and "--env-file" in r.message for r in caplog.records)
    # an env file others can read: refused
    env.chmod(0o644)
    assert listen_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mode 0644" in err[0] and "chmod 600" in err[0]


def test_home_assistant_watched_labels(tmp_path: Path) -> None:
    import argparse

    from dymn_edge.labels import audioset_labels
    from dymn_edge.runtime.device.options import _watched
    from dymn_edge.runtime.output import TagFilter

    audioset = audioset_labels()
    none = argparse.Namespace(thresholds=None)
    assert _watched(none, audioset, TagFilter.build(audioset)) == []  # 527 labels: only the last-event sensor
    assert _watched(none, LABELS, TagFilter.build(LABELS, exclude=["Siren"])) == [0, 2]  # small models: all
    t = tmp_path / "t.toml"
    t.write_text('["Dog"]\non = 0.4\n')
    picked = _watched(argparse.Namespace(thresholds=str(t)), audioset, TagFilter.build(audioset, include=["Speech"]))
    assert [audioset[i].display_name for i in picked] == ["Speech", "Dog"]
