"""dymn-listen as a device, end to end on the virtual microphone: spoken digits go to the
SQLite log, the FLAC clips (tagged again with dymn-tag) and a real mosquitto broker that is
stopped and restarted mid-run; a database deleted under the device comes back on SIGHUP, and
``kill -9`` mid-run leaves a readable database."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dymn_edge.runtime.device.eventlog import EventLogError, file_sha256, open_readonly

from .conftest import spoken_digits
from .test_device_mqtt import HA_BINARY_KEYS, HA_SENSOR_KEYS, Broker, Subscriber
from .test_microphone import _listen_cmd, _play_into_fifo, vmic  # noqa: F401 (fixture)
from .test_stream_events import _assert_digits_in_order

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COMMON = ["--json", "--every-hop", "--hop", "0.25", "--window", "1", "--on", "0.8", "--off", "0.5",
          "--threads", "1", "--device", "pulse"]


def _matched(digits: list[int], centres: list[float], rows: list[dict]) -> list[dict]:
    """The rows that are the spoken digits (as _assert_digits_in_order matches them)."""
    out, pos = [], 0
    for d, c in zip(digits, centres):
        while pos < len(rows) and not (rows[pos]["label_index"] == d and abs(rows[pos]["start_s"] - c) <= 1.0):
            pos += 1
        assert pos < len(rows), f"digit {d} at {c:.2f} s not in {rows}"
        out.append(rows[pos])
        pos += 1
    return out


def _wait_for_rows(db: Path, n: int, timeout: float = 20.0) -> None:
    """Until the event database holds ``n`` rows (it is written by the sinks' worker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = open_readonly(db)
            try:
                if conn.execute("SELECT count(*) FROM events").fetchone()[0] >= n:
                    return
            finally:
                conn.close()
        except (EventLogError, sqlite3.Error):  # not created yet / being re-created after SIGHUP
            pass
        time.sleep(0.05)
    pytest.fail(f"{db} did not reach {n} rows in {timeout:g} s")


class _Run:
    """dymn-listen in the background: audio starts with its first stdout line; ``on_line``
    sees every parsed line (to act on events while it runs)."""

    def __init__(self, env: dict[str, str], wave: np.ndarray, args: list[str], on_line=None) -> None:
        self.proc = subprocess.Popen(_listen_cmd(*args), env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.go = threading.Event()
        self.writer = threading.Thread(target=_play_into_fifo, args=(env, wave, self.proc, self.go), daemon=True)
        self.writer.start()
        self.err: list[str] = []
        self.err_reader = threading.Thread(target=lambda: self.err.append(self.proc.stderr.read()), daemon=True)
        self.err_reader.start()
        self.lines: list[dict] = []
        self.on_line = on_line

    def read(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            self.go.set()
            obj = json.loads(line)
            self.lines.append(obj)
            if self.on_line:
                self.on_line(obj, self)
            if time.monotonic() > deadline:
                break
        try:
            self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("dymn-listen did not stop")
        self.writer.join(5)
        self.err_reader.join(5)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def events(self, kind: str) -> list[dict]:
        return [o for o in self.lines if o["type"] == "event" and o["event"] == kind]


@pytest.mark.mic
def test_device_run_db_clips_mqtt_with_broker_restart(vmic: dict[str, str], fsdd_onnx: Path,  # noqa: F811
                                                      fsdd_dir: Path, tmp_path: Path) -> None:
    digits = [3, 9, 2, 7, 5]
    wave, centres = spoken_digits(fsdd_dir, digits, gap=2.0)
    broker = Broker(tmp_path / "broker")
    broker.start()
    sub = Subscriber(broker.port)
    db, clips = tmp_path / "events.db", tmp_path / "clips"
    thresholds = tmp_path / "thresholds.toml"
    thresholds.write_text('["three"]\non = 0.7\noff = 0.4\n\n["nine"]\nmin_duration = 0.25\n')
    actions: list[str] = []

    def on_line(obj: dict, run: _Run) -> None:  # broker down after the 2nd digit, up at the 3rd
        if obj["type"] != "event":
            return
        if obj["event"] == "end" and len(run.events("end")) == 2 and not actions:
            broker.stop()
            actions.append("stopped")
        elif obj["event"] == "start" and actions == ["stopped"]:
            broker.start()
            actions.append("restarted")

    run = _Run(vmic, wave, ["--model", str(fsdd_onnx), "--duration", "16", *COMMON, "--db", str(db),
                            "--clips", str(clips), "--clips-pre", "0.5", "--clips-post", "0.5",
                            "--mqtt", broker.url + "/test?node=pi", "--thresholds", str(thresholds)],
               on_line)
    try:
        run.read(timeout=60)
        assert run.proc.returncode == 0, run.stderr[-2000:]
        assert actions == ["stopped", "restarted"], run.lines
        summary = run.lines[-1]
        ends = run.events("end")
        # the softmax model's level gate (default -60 dBFS): the digital silence between the
        # digits scores nothing, and every hop line says its window's level
        hops = [o for o in run.lines if o["type"] == "hop"]
        assert hops and all("level_dbfs" in o for o in hops)
        silent = [o for o in hops if o.get("below_level_floor")]
        assert silent and all(o["tags"] == [] and (o["level_dbfs"] is None or o["level_dbfs"] < -60) for o in silent)
        # the database: every event, in order, with model hash, device, UTC and stream times
        conn = open_readonly(db)
        rows = [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id")]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
        assert len(rows) == len(ends) == summary["db_events"]
        _assert_digits_in_order(digits, [c + 0.25 for c in centres], [(r["label_index"], r["start_s"]) for r in rows])
        sha = file_sha256(fsdd_onnx)
        for r, e in zip(rows, ends):
            assert (r["label"], r["start_s"], r["end_s"]) == (e["label"], e["start"], e["end"])
            assert r["model_sha256"] == sha and "pulse" in r["device"] and r["start_utc"] < r["end_utc"]
            assert 0.4 <= r["mean_prob"] <= r["peak_smoothed_prob"] <= r["peak_raw_prob"] <= 1.0 and r["duration_s"] > 0
        # MQTT: every onset / offset arrived (the broker's outage included), in order
        assert sub.wait_for(lambda: len(set(sub.on("test/pi/event"))) >= 2 * len(rows), timeout=20), \
            (summary, [json.loads(p)["event"] + " " + json.loads(p)["label"] for p in sub.on("test/pi/event")],
             rows, run.stderr[-1500:], (broker.dir / "broker.log").read_text()[-2000:] if (broker.dir / "broker.log").exists() else "")
        # QoS 1 is at-least-once: a message the broker took just before it stopped is re-sent
        # (same payload) after the reconnect; drop such duplicates, keep the order
        msgs = [json.loads(p) for p in dict.fromkeys(sub.on("test/pi/event"))]
        assert [(m["event"], m["label"], m["start_s"]) for m in msgs if m["event"] == "end"] == \
            [("end", r["label"], r["start_s"]) for r in rows]
        _assert_digits_in_order(digits, [c + 0.25 for c in centres],
                                [(m["index"], m["start_s"]) for m in msgs if m["event"] == "start"])
        assert summary["mqtt_queued"] >= 1 and summary["mqtt_dropped"] == 0 and summary["mqtt_unsent"] == 0
        assert summary["mqtt_reconnects"] >= 1 and summary["mqtt_sent"] == len(msgs)
        warnings = [x for x in run.stderr.splitlines() if "mqtt:" in x]  # the outage, said once each way
        assert len([x for x in warnings if "unavailable" in x]) == 1, warnings
        assert len([x for x in warnings if "again after" in x]) == 1, warnings
        assert sub.on("test/pi/availability")[-1] == b"offline"  # clean stop
        configs = {t: json.loads(p) for t, p, _ in sub.messages if t.startswith("homeassistant/")}
        sensors = {t: c for t, c in configs.items() if "/binary_sensor/pi/" in t}
        assert {c["name"] for c in sensors.values()} == {"three", "nine"}  # the labels --thresholds names
        assert all(HA_BINARY_KEYS <= set(c) for c in sensors.values())
        assert HA_SENSOR_KEYS <= set(configs["homeassistant/sensor/pi/last_event/config"])
        # clips: one FLAC per event, and dymn-tag hears the digit in it
        paths = [Path(r["clip"]) for r in rows]
        assert all(p.is_file() and p.suffix == ".flac" and p.parent.parent == clips for p in paths)
        assert summary["clips_written"] == len(rows)
        tag = subprocess.run([sys.executable, "-c", "import sys; from dymn_edge.runtime.cli import tag_main; "
                              "sys.exit(tag_main())", "--model", str(fsdd_onnx), "--json", "--top-k", "1",
                              *map(str, paths)], capture_output=True, text=True, timeout=120)
        assert tag.returncode == 0, tag.stderr[-1000:]
        best: dict[str, tuple[float, int]] = {}  # per clip: the most confident tag over its windows
        for o in map(json.loads, tag.stdout.splitlines()):
            t = o["tags"][0]
            name = Path(o["file"]).name
            best[name] = max(best.get(name, (-1.0, -1)), (t["probability"], t["index"]))
        top = {name: index for name, (_, index) in best.items()}
        spoken = _matched(digits, [c + 0.25 for c in centres], rows)  # (a stray extra event may tag otherwise)
        assert [top[Path(r["clip"]).name] for r in spoken] == digits
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        sub.close()
        broker.stop()


@pytest.mark.mic
def test_device_kill9_leaves_readable_db_and_last_will(vmic: dict[str, str], fsdd_onnx: Path,  # noqa: F811
                                                       fsdd_dir: Path, tmp_path: Path) -> None:
    digits = [2, 5, 8, 4]
    wave, centres = spoken_digits(fsdd_dir, digits, gap=2.0)
    broker = Broker(tmp_path / "broker")
    broker.start()
    sub = Subscriber(broker.port)
    db = tmp_path / "events.db"
    done: list[str] = []

    def on_line(obj: dict, run: _Run) -> None:
        if obj["type"] == "event" and obj["event"] == "end":
            n = len(run.events("end"))
            if n == 1:  # the database is deleted under the running device: SIGHUP re-creates it
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
                run.proc.send_signal(signal.SIGHUP)
                done.append("hup")
            elif n == 3:  # killed once the 2nd and 3rd rows are in (the sinks write off the inference thread)
                _wait_for_rows(db, 2)
                os.kill(run.proc.pid, signal.SIGKILL)
                done.append("kill")

    run = _Run(vmic, wave, ["--model", str(fsdd_onnx), *COMMON, "--db", str(db),
                            "--mqtt", broker.url + "/k?node=pi&discovery=none"], on_line)
    try:
        run.read(timeout=60)
        assert done == ["hup", "kill"] and run.proc.returncode == -signal.SIGKILL, run.stderr[-2000:]
        closed = run.events("end")
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        conn = open_readonly(db)
        rows = [dict(r) for r in conn.execute("SELECT label, start_s, end_s FROM events ORDER BY id")]
        conn.close()
        # every event closed after the SIGHUP (the 2nd and 3rd printed, maybe one more) is in the new file
        assert len(rows) >= 2
        assert rows[:len(closed) - 1] == [{"label": e["label"], "start_s": e["start"], "end_s": e["end"]}
                                          for e in closed[1:]]
        _assert_digits_in_order(digits[1:3], [c + 0.25 for c in centres[1:3]],
                                [(DIGIT_NAMES.index(r["label"]), r["start_s"]) for r in rows])
        # the broker saw the connection die and published the last will
        assert sub.wait_for(lambda: sub.on("k/pi/availability")[-1:] == [b"offline"], timeout=10)
        assert sub.on("k/pi/availability")[0] == b"online"
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        sub.close()
        broker.stop()
