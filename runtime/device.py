"""``dymn-listen`` as a device: the options and wiring of the database, clips, MQTT,
per-label thresholds and the systemd unit (kept out of cli.py so the terminal tool stays
small; everything here is off unless its option is given).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.events import Event, EventConfig
from dymn_edge.runtime.sinks import EventSink, SinkSet
from dymn_edge.runtime.clips import ClipRecorder
from dymn_edge.runtime.eventlog import EventLog
from dymn_edge.runtime.mqtt import MqttPublisher, parse_mqtt_url
from dymn_edge.runtime.thresholds import labels_in, load_thresholds

log = logging.getLogger(__name__)

__all__ = ["add_device_args", "build_sinks", "per_label_thresholds", "systemd_unit", "DEVICE_EXAMPLES"]

#: Models with at most this many labels get one Home Assistant binary_sensor per label
#: when neither --include nor --thresholds names the watched ones.
HA_ALL_LABELS_MAX = 20

DEVICE_EXAMPLES = """\
as a device (all off by default; see the README "Run it as a device"):
  dymn-listen --model m.tflite --db events.db --clips clips/ --clips-max-mb 500 \\
      --mqtt mqtt://user:pass@broker:1883/dymn-edge?node=garden --thresholds thresholds.toml
  dymn-listen --model m.tflite --db events.db --print-systemd-unit > dymn-listen.service
  dymn-events events.db --summary                      detections per label and hour
SIGHUP re-opens the database and the clips folder (log rotation); --include / --exclude
apply to the database, clips and MQTT as to the terminal.
"""


def add_device_args(p: argparse.ArgumentParser) -> None:
    """The device options of dymn-listen."""
    g = p.add_argument_group("device (detection log, clips, MQTT, service)")
    g.add_argument("--db", metavar="PATH", default=None,
                   help="write every closed event to this SQLite file (WAL; created if missing)")
    g.add_argument("--clips", metavar="DIR", default=None,
                   help="write each event's audio as FLAC into DIR/YYYY-MM-DD/")
    g.add_argument("--clips-pre", type=float, default=1.0, metavar="SECONDS",
                   help="audio kept before an event's start (default 1)")
    g.add_argument("--clips-post", type=float, default=1.0, metavar="SECONDS",
                   help="audio kept after an event's end (default 1)")
    g.add_argument("--clips-max-mb", type=float, default=None, metavar="MB",
                   help="delete the oldest clips beyond this total size")
    g.add_argument("--clips-max-days", type=float, default=None, metavar="DAYS",
                   help="delete clips older than this")
    g.add_argument("--clips-min-free-mb", type=float, default=200.0, metavar="MB",
                   help="write no clip while the disk has less free space than this (default 200)")
    g.add_argument("--mqtt", metavar="URL", default=None,
                   help="publish events to an MQTT broker: mqtt[s]://[user:pass@]host[:port][/prefix]"
                        "[?node=NAME&discovery=homeassistant|none&qos=1&queue=1000&ca=FILE]")
    g.add_argument("--thresholds", metavar="FILE", default=None,
                   help="per-label on / off / min_duration (CSV or TOML) over --on / --off / --min-duration")
    g.add_argument("--print-systemd-unit", action="store_true",
                   help="print a systemd unit running this command line as a service, and exit")


def per_label_thresholds(args: argparse.Namespace, labels: Sequence[Any], cfg: EventConfig) -> np.ndarray | None:
    """The (n, 3) thresholds of --thresholds, or None without it."""
    if not args.thresholds:
        return None

    return load_thresholds(args.thresholds, labels, cfg)


class _Filtered(EventSink):
    """The device sinks see the events the terminal shows (--include / --exclude)."""

    name = "filter"

    def __init__(self, inner: SinkSet, keep: Callable[[int], bool]) -> None:
        self.inner, self.keep = inner, keep

    def audio(self, samples: np.ndarray, end: float) -> None:
        self.inner.audio(samples, end)

    def event(self, ev: Event) -> None:
        if self.keep(ev.label.index):
            self.inner.event(ev)

    def reopen(self) -> None:
        self.inner.reopen()

    def close(self) -> dict[str, Any]:
        return self.inner.close()


def build_sinks(args: argparse.Namespace, tagger: Any, filt: Any,
                device_name: Callable[[], str], sample_rate: int) -> EventSink | None:
    """Clips, database and MQTT sinks in that order (a clip path is set before the row and
    the message are written), or None when no device option is given."""
    sinks: list[EventSink] = []
    labels = tagger.labels
    try:
        if args.clips:
            sinks.append(ClipRecorder(args.clips, pre=args.clips_pre, post=args.clips_post,
                                      max_mb=args.clips_max_mb, max_days=args.clips_max_days,
                                      min_free_mb=args.clips_min_free_mb,
                                      sample_rate=sample_rate))
        elif args.clips_max_mb is not None or args.clips_max_days is not None:
            raise DymnEdgeError("--clips-max-mb / --clips-max-days need --clips DIR")
        if args.db:
            sinks.append(EventLog(args.db, model=Path(args.model).resolve(), device=device_name))
        if args.mqtt:
            cfg = parse_mqtt_url(args.mqtt)
            watched = _watched(args, labels, filt)
            try:
                ver = version("dymn-edge")
            except PackageNotFoundError:
                ver = ""
            sinks.append(MqttPublisher(cfg, labels, watched=watched,
                                       model_name=getattr(tagger.metadata, "model_name", ""),
                                       model_file=Path(args.model).name, version=ver))
    except Exception:
        for s in sinks:  # do not leave a half-built device behind
            s.close()
        raise
    if not sinks:
        return None

    def keep(index: int) -> bool:
        return (filt.include is None or index in filt.include) and index not in filt.exclude

    return _Filtered(SinkSet(sinks), keep)


def _watched(args: argparse.Namespace, labels: Sequence[Any], filt: Any) -> list[int]:
    """Labels that get a Home Assistant binary_sensor."""
    idx: list[int] = sorted(filt.include) if filt.include is not None else []
    if args.thresholds:
        idx += labels_in(args.thresholds, labels)
    if not idx and len(labels) <= HA_ALL_LABELS_MAX:
        idx = list(range(len(labels)))
    return [i for i in dict.fromkeys(idx) if i not in filt.exclude]


def _systemd_quote(arg: str) -> str:
    """One ExecStart word: systemd expands % and $, and splits on blanks unless quoted."""
    s = arg.replace("%", "%%").replace("$", "$$")
    if s and not any(c in s for c in " \t\"'\\;"):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


_PATH_OPTS = ("--model", "-m", "--db", "--clips", "--thresholds")


def systemd_unit(argv: Sequence[str]) -> str:
    """A unit file running ``dymn-listen argv`` (minus --print-systemd-unit) as a service,
    with paths made absolute and restart on failure; SIGHUP (reload) re-opens files."""
    exe = Path(sys.executable).parent / "dymn-listen"
    exe_s = str(exe) if exe.exists() else "dymn-listen"
    args: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--print-systemd-unit":
            continue
        opt, eq, val = a.partition("=")
        if opt in _PATH_OPTS:
            if eq:
                args.append(f"{opt}={Path(val).resolve()}")
                continue
            args.append(a)
            nxt = next(it, None)
            if nxt is not None:
                args.append(str(Path(nxt).resolve()))
            continue
        args.append(a)
    cmd = " ".join(_systemd_quote(x) for x in [exe_s, *args])
    user = getpass.getuser()
    return f"""\
# dymn-listen as a service. Install (as root):
#   dymn-listen {' '.join(shlex.quote(a) for a in args)} --print-systemd-unit \\
#       > /etc/systemd/system/dymn-listen.service
#   systemctl daemon-reload && systemctl enable --now dymn-listen
# Logs: journalctl -u dymn-listen -f     Re-open files (log rotation): systemctl reload dymn-listen
[Unit]
Description=dymn-edge audio tagger (dymn-listen)
Wants=network-online.target
After=network-online.target sound.target

[Service]
Type=simple
User={user}
SupplementaryGroups=audio
WorkingDirectory={os.getcwd()}
Environment=PYTHONUNBUFFERED=1
ExecStart={cmd}
ExecReload=/bin/kill -HUP $MAINPID
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
