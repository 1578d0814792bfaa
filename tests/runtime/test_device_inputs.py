"""Bad input to the device tools (dymn-listen, dymn-events): each is one clear line on stderr
and exit 2, never a traceback; dymn-listen --print-systemd-unit refuses what a start refuses."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dymn_edge.runtime.cli import listen_main
from dymn_edge.runtime.device.eventlog import EventLog
from dymn_edge.runtime.device.events_cli import main as events_main

UNIT = "--print-systemd-unit"

# (tool, argv with {model} / {db} / {tmp} placeholders, a phrase the one line holds)
CASES = [
    ("listen", ["--model", "{model}", "--duration", "nan"], "--duration: must be a finite number"),
    ("listen", ["--model", "{model}", "--duration", "inf"], "--duration: must be a finite number"),
    ("listen", ["--model", "{model}", "--duration", "-1"], "--duration must be positive"),
    ("listen", ["--model", "{model}", "--min-duration", "nan"], "--min-duration: must be a finite number"),
    ("listen", ["--model", "{model}", "--min-duration", "1e308"], "--min-duration must be between 0 and 86400"),
    ("listen", ["--model", "{model}", "--min-level-dbfs", "6"], "dBFS is <= 0"),
    ("listen", ["--model", "{model}", "--min-level-dbfs", "quiet"], "invalid number: 'quiet'"),
    ("listen", ["--model", "{model}", "--clips", "{tmp}/c", "--clips-pre", "nan"], "must be a finite number"),
    ("listen", ["--model", "{model}", "--mqtt", "mqtts://h?ca={tmp}/missing.crt"], "CA file not found"),
    ("listen", ["--model", "{model}", "--mqtt", "bogus://h"], "must start with mqtt:// or mqtts://"),
    ("listen", ["--model", "{model}", "--env-file", "{tmp}/none.env", "--mqtt", "mqtt://u@h"], "none.env"),
    ("listen", ["--model", "{model}", "--env-file", "{tmp}/ok.env"], "used only with --mqtt"),
    # --print-systemd-unit checks what a start checks (a unit that would crash-loop is refused)
    ("listen", ["--model", "{tmp}/missing.onnx", UNIT], "model file not found"),
    ("listen", ["--model", "{model}", "--hop", "-1", UNIT], "hop"),
    ("listen", ["--model", "{model}", "--thresholds", "{tmp}/t.csv", UNIT], "unknown label 'tree'"),
    ("listen", ["--model", "{model}", "--db", "{tmp}/foreign.db", UNIT], "not a dymn-edge event database"),
    ("listen", ["--model", "{model}", "--db", "{tmp}/t.csv/e.db", UNIT], "cannot create event database"),
    ("listen", ["--model", "{model}", "--clips-max-mb", "5", UNIT], "need --clips DIR"),
    ("listen", ["--model", "{model}", "--mqtt", "mqtt://h?qos=7", UNIT], "qos must be"),
    ("events", ["{db}", "--since", "99999999d"], "reaches before year 1"),
    ("events", ["{db}", "--until", "99999999999999999999999w"], "reaches before year 1"),
    ("events", ["{db}", "--min-prob", "2"], "--min-prob must be a probability in [0, 1]"),
    ("events", ["{db}", "--min-prob", "nan"], "--min-prob must be a probability in [0, 1]"),
    ("events", ["{db}", "--format", "xml"], "invalid choice: 'xml'"),
    # second pass: empty values, contradictions, options a mode would ignore, malformed URLs
    ("listen", ["--model", "{model}", "--smooth", "none:3"], "--smooth none takes no value"),
    ("listen", ["--model", "{model}", "--smooth", ""], "--smooth: must not be empty"),
    ("listen", ["--model", "{model}", "--device", ""], "--device/-d: must not be empty"),
    ("listen", ["--model", "{model}", "--db", "", UNIT], "--db: must not be empty"),
    ("listen", ["--model", "{model}", "--mqtt", "", UNIT], "--mqtt: must not be empty"),
    ("listen", ["--model", "{model}", "--db", "/proc/x.db", UNIT], "cannot create event database"),
    ("listen", ["--model", "{model}", "--clips", "/proc/c", UNIT], "cannot be created"),
    ("listen", ["--model", "{model}", "--clips", "{tmp}/t.csv/c", UNIT], "is a file"),
    ("listen", ["--model", "{model}", "--clips", "{tmp}/c", "--clips-pre", "1e9", UNIT], "<= 600 s"),
    ("listen", ["--model", "{model}", "--clips", "{tmp}/c", "--clips-min-free-mb", "-1", UNIT],
     "--clips-min-free-mb must be >= 0"),
    ("listen", ["--model", "{model}", "--clips-pre", "2", UNIT], "need --clips DIR"),
    ("listen", ["--model", "{model}", "--clips-min-free-mb", "5", UNIT], "need --clips DIR"),
    ("listen", ["--model", "{model}", "--mqtt", "mqtt://[::1", UNIT], "--mqtt URL is malformed"),
    ("listen", ["--list-devices", "--db", "{tmp}/e.db"], "leave out --db"),
    ("events", ["{tmp}"], "is a folder"),
    ("events", [""], "DB: must not be empty"),
    ("events", ["{db}", "--label", ""], "--label got an empty name"),
    ("events", ["{db}", "--label", "Dog|"], "--label got an empty name"),
    ("events", ["{db}", "--since", ""], "--since: must not be empty"),
    ("events", ["{db}", "--since", "1h", "--until", "2h"], "is not before --until"),
    ("events", ["{db}", "--since", "9999-12-31T23:59:59-05:00"], "outside the years 1-9999"),
    ("events", ["{db}", "--limit", "99999999999999999999999"], "--limit must be between 1 and"),
    ("events", ["{db}", "--summary", "--limit", "3"], "--summary counts every matching event"),
    ("events", ["{db}", "--summary", "--newest-first"], "--summary counts every matching event"),
]


def _run(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Exit code and stderr of a CLI's main (argparse errors exit through SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("tool", "argv", "phrase"), CASES, ids=[" ".join(c[1]) for c in CASES])
def test_device_bad_input_is_one_line(tool: str, argv: list[str], phrase: str, fsdd_onnx: Path,
                                      tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "t.csv").write_text("label,on\ntree,0.5\n")
    (tmp_path / "ok.env").write_text("DYMN_EDGE_MQTT_PASSWORD=x\n")
    (tmp_path / "ok.env").chmod(0o600)
    with sqlite3.connect(tmp_path / "foreign.db") as c:
        c.execute("CREATE TABLE x (y)")
    db = tmp_path / "events.db"
    EventLog(db).close()
    args = [a.format(model=fsdd_onnx, db=db, tmp=tmp_path) for a in argv]
    code, err = _run(listen_main if tool == "listen" else events_main, args, capsys)
    prog = "dymn-listen" if tool == "listen" else "dymn-events"
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "c").exists()  # nothing created by a refused start


def test_duration_nan_in_a_subprocess_is_one_line() -> None:
    """The real entry point: no traceback reaches the terminal."""
    proc = subprocess.run([sys.executable, "-c", "import sys; from dymn_edge.runtime.cli import listen_main; "
                           "sys.exit(listen_main())", "--duration", "nan"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "dymn-listen: error: argument --duration: must be a finite number, got 'nan' (see dymn-listen --help)"]
