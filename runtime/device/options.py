"""``dymn-listen`` as a device: the options and wiring of the database, clips, MQTT,
per-label thresholds and the systemd unit (kept out of cli.py so the terminal tool stays
small; everything here is off unless its option is given).

A start checks the device options in :func:`check_device` (nothing opened or created) and
then opens the sinks from its :class:`DevicePlan`; ``--print-systemd-unit`` runs the same
checks (and everything else a start does before opening the microphone), so a unit that
would crash-loop is never printed. Secrets never go into the unit: the MQTT password and the
web token come from ``--env-file`` (mode 0600, the unit's ``EnvironmentFile=``).
"""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import ipaddress
import logging
import os
import shlex
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from dymn_edge.cliutil import finite, non_empty
from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.events import EventConfig
from dymn_edge.runtime.sinks import EventSink
from dymn_edge.runtime.device.clips import ClipRecorder, check_clip_options
from dymn_edge.runtime.device.eventlog import EventLog, check_event_db
from dymn_edge.runtime.device.mqtt import PASSWORD_ENV, MqttConfig, MqttPublisher, import_paho, parse_mqtt_url
from dymn_edge.runtime.device.thresholds import labels_in, load_thresholds

log = logging.getLogger(__name__)

__all__ = ["add_device_args", "build_sinks", "check_device", "DevicePlan", "per_label_thresholds",
           "read_env_file", "systemd_unit", "DEVICE_EXAMPLES", "TOKEN_ENV", "WebError", "parse_web_address",
           "is_loopback", "web_token", "import_aiohttp", "start_web"]

#: Models with at most this many labels get one Home Assistant binary_sensor per label
#: when neither --include nor --thresholds names the watched ones.
HA_ALL_LABELS_MAX = 20

DEVICE_EXAMPLES = """\
as a device (all off by default; see the README "Run it as a device"):
  dymn-listen --model m.tflite --db events.db --clips clips/ --clips-max-mb 500 \\
      --mqtt mqtt://user:pass@broker:1883/dymn-edge?node=garden --thresholds thresholds.toml
  dymn-listen --model m.tflite --db events.db --mqtt mqtt://user@broker --env-file mqtt.env \\
      --print-systemd-unit > dymn-listen.service      (mqtt.env, mode 0600: DYMN_EDGE_MQTT_PASSWORD=...)
  dymn-events events.db --summary                      detections per label and hour
  dymn-listen --model m.tflite --db events.db --clips clips/ --web 8080
                                                       ...and a dashboard on http://127.0.0.1:8080/
SIGHUP re-opens the database and the clips folder (log rotation); --include / --exclude
apply to the database, clips and MQTT as to the terminal.
"""


#: --clips options left out: None on the command line (to refuse them without --clips), then these.
CLIP_DEFAULTS = {"clips_pre": 1.0, "clips_post": 1.0, "clips_min_free_mb": 200.0}


def add_device_args(p: argparse.ArgumentParser) -> None:
    """The device options of dymn-listen."""
    g = p.add_argument_group("device (detection log, clips, MQTT, service)")
    g.add_argument("--db", type=non_empty, metavar="PATH", default=None,
                   help="write every closed event to this SQLite file (WAL; created if missing)")
    g.add_argument("--clips", type=non_empty, metavar="DIR", default=None,
                   help="write each event's audio as FLAC into DIR/YYYY-MM-DD/")
    g.add_argument("--clips-pre", type=finite, default=None, metavar="SECONDS",
                   help="audio kept before an event's start (default 1)")
    g.add_argument("--clips-post", type=finite, default=None, metavar="SECONDS",
                   help="audio kept after an event's end (default 1)")
    g.add_argument("--clips-max-mb", type=finite, default=None, metavar="MB",
                   help="delete the oldest clips beyond this total size")
    g.add_argument("--clips-max-days", type=finite, default=None, metavar="DAYS",
                   help="delete clips older than this")
    g.add_argument("--clips-min-free-mb", type=finite, default=None, metavar="MB",
                   help="write no clip while the disk has less free space than this (default 200)")
    g.add_argument("--mqtt", type=non_empty, metavar="URL", default=None,
                   help="publish events to an MQTT broker: mqtt[s]://[user:pass@]host[:port][/prefix]"
                        "[?node=NAME&discovery=homeassistant|none&qos=1&queue=1000&ca=FILE]")
    g.add_argument("--thresholds", type=non_empty, metavar="FILE", default=None,
                   help="per-label on / off / min_duration (CSV or TOML) over --on / --off / --min-duration")
    g.add_argument("--env-file", type=non_empty, metavar="FILE", default=None,
                   help=f"KEY=VALUE lines (mode 0600) with secrets, e.g. {PASSWORD_ENV} for a --mqtt URL "
                        "with a user and no password; the unit reads it as EnvironmentFile=")
    g.add_argument("--web", type=non_empty, metavar="[HOST:]PORT", default=None,
                   help="serve a dashboard (live tags, history, clips; needs the [web] extra) on "
                        "127.0.0.1:PORT, or HOST:PORT (0.0.0.0 for the network: set a token)")
    g.add_argument("--web-token", type=non_empty, metavar="TOKEN", default=None,
                   help=f"the dashboard asks for this token (better: {TOKEN_ENV}=... in --env-file)")
    g.add_argument("--print-systemd-unit", action="store_true",
                   help="check the command line as a start would (model, options, files), print a "
                        "systemd unit running it as a service, and exit")


def per_label_thresholds(args: argparse.Namespace, labels: Sequence[Any], cfg: EventConfig) -> np.ndarray | None:
    """The (n, 3) thresholds of --thresholds, or None without it."""
    if not args.thresholds:
        return None

    return load_thresholds(args.thresholds, labels, cfg)


@dataclass
class DevicePlan:
    """The device options, checked: what :func:`build_sinks` opens."""

    mqtt: MqttConfig | None = None
    watched: tuple[int, ...] = ()
    env_file: Path | None = None
    web: tuple[str, int] | None = None  # (host, port) of --web
    web_token: str | None = None


# -- the web dashboard's options (the server is runtime/device/web.py, which needs aiohttp) --

#: The environment variable (e.g. in ``--env-file``) holding the dashboard's token.
TOKEN_ENV = "DYMN_EDGE_WEB_TOKEN"


class WebError(DymnEdgeError):
    """A web option that cannot be used (address, port in use, missing files or aiohttp)."""


def parse_web_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); the host defaults to
    127.0.0.1 (reachable from this machine only). Port 0: any free port."""
    s = text.strip()
    host, port_s = "127.0.0.1", s
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or s[end + 1:end + 2] != ":":
            raise WebError(f"--web takes [HOST:]PORT (IPv6 as [::1]:8080), got '{text}'")
        host, port_s = s[1:end], s[end + 2:]
    elif ":" in s:
        h, _, port_s = s.rpartition(":")
        if ":" in h:
            raise WebError(f"--web: write an IPv6 host in brackets, e.g. [::]:8080, got '{text}'")
        host = h or host
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise WebError(f"--web takes [HOST:]PORT with a port 0-65535, got '{text}'")
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise WebError(f"--web: not a host name: '{host}'")
    return host, int(port_s)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web_token(cli_token: str | None, env: Mapping[str, str]) -> str | None:
    """The dashboard's token: ``--web-token``, else :data:`TOKEN_ENV` of ``env``."""
    token = cli_token if cli_token is not None else env.get(TOKEN_ENV) or None
    if token is not None and (len(token) < 8 or any(c.isspace() for c in token)):
        raise WebError("the web token must be at least 8 characters without blanks")
    return token


def import_aiohttp() -> None:
    """One clear line when the [web] extra is not installed."""
    if importlib.util.find_spec("aiohttp") is None:
        raise WebError("--web needs aiohttp: pip install 'dymn-edge[web]'")


def read_env_file(path: str | Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (systemd ``EnvironmentFile=`` syntax: ``#`` comments, optional
    quotes). Refused when group or others may read it: it holds secrets."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DymnEdgeError(f"--env-file {p}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        raise DymnEdgeError(f"--env-file {p} is not a file")
    if mode & 0o077:
        raise DymnEdgeError(f"--env-file {p} has mode {stat.S_IMODE(mode):04o}: group / others can read the "
                            f"secrets in it; chmod 600 {p}")
    env: dict[str, str] = {}
    for k, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, eq, val = line.removeprefix("export ").partition("=")
        key, val = key.strip(), val.strip()
        if not eq or not key.replace("_", "").isalnum():
            raise DymnEdgeError(f"--env-file {p}:{k}: not a KEY=VALUE line")
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
            val = val[1:-1]
        env[key] = val
    return env


def check_device(args: argparse.Namespace, labels: Sequence[Any], filt: Any) -> DevicePlan:
    """Every device option checked without opening or creating anything (a start and
    ``--print-systemd-unit`` both run this)."""
    env_vars = read_env_file(args.env_file) if args.env_file else {}
    clip_opts = {"--clips-pre": args.clips_pre, "--clips-post": args.clips_post,
                 "--clips-max-mb": args.clips_max_mb, "--clips-max-days": args.clips_max_days,
                 "--clips-min-free-mb": args.clips_min_free_mb}
    if not args.clips and (given := [k for k, v in clip_opts.items() if v is not None]):
        raise DymnEdgeError(f"{' / '.join(given)}: clip options need --clips DIR")  # ignored otherwise
    for name, default in CLIP_DEFAULTS.items():  # None: not given on the command line
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.clips:
        check_clip_options(args.clips, pre=args.clips_pre, post=args.clips_post,
                           max_mb=args.clips_max_mb, max_days=args.clips_max_days)
        if args.clips_min_free_mb < 0:
            raise DymnEdgeError(f"--clips-min-free-mb must be >= 0, got {args.clips_min_free_mb:g}")
    if args.db:
        check_event_db(args.db)
    plan = DevicePlan(env_file=Path(args.env_file).resolve() if args.env_file else None)
    if args.mqtt:
        parse_mqtt_url(args.mqtt, {})  # a malformed URL is one line before it is taken apart here
        if args.print_systemd_unit and urlsplit(args.mqtt).password:
            raise DymnEdgeError(f"the --mqtt URL holds a password, which the unit would show to every "
                                f"user: use mqtt://USER@HOST and put {PASSWORD_ENV}=... in a file of mode "
                                "0600 given as --env-file FILE")
        # the service sees only its EnvironmentFile, not this shell's environment
        env: Mapping[str, str] = env_vars if args.print_systemd_unit else {**os.environ, **env_vars}
        plan.mqtt = parse_mqtt_url(args.mqtt, env)
        import_paho()
        if plan.mqtt.username is not None and plan.mqtt.password is None:
            where = "--env-file" if args.print_systemd_unit else "the environment or --env-file"
            log.warning("--mqtt: user %s connects without a password (no %s in %s)",
                        plan.mqtt.username, PASSWORD_ENV, where)
        plan.watched = tuple(_watched(args, labels, filt))
    if args.web_token is not None and not args.web:
        raise DymnEdgeError("--web-token protects the dashboard: it needs --web")
    if args.web:
        plan.web = parse_web_address(args.web)
        if args.print_systemd_unit and args.web_token is not None:
            raise DymnEdgeError(f"--web-token would be shown to every user in the unit: put {TOKEN_ENV}=... "
                                "in a file of mode 0600 given as --env-file FILE")
        env = env_vars if args.print_systemd_unit else {**os.environ, **env_vars}
        plan.web_token = web_token(args.web_token, env)
        import_aiohttp()
    if args.env_file and not (args.mqtt or args.web):
        raise DymnEdgeError("--env-file holds secrets for --mqtt and --web; it is used only with --mqtt or --web")
    return plan


def start_web(plan: DevicePlan, args: argparse.Namespace, tagger: Any, scorer: Any, tracker: Any,
              filt: Any) -> Any:
    """Start the dashboard of a listener (None without --web); its ``live.chain(on_hop)`` is
    the listener's ``on_hop``, and ``stop()`` ends it."""
    if plan.web is None:
        return None
    from dymn_edge.runtime.device import web  # noqa: PLC0415 (aiohttp: the optional [web] extra)

    live = web.LiveState(tagger.labels, info=web.live_info(tagger, scorer, args.model), tracker=tracker,
                         select=lambda p: filt.select(p))
    server = web.WebServer(db=args.db, clips=args.clips, host=plan.web[0], port=plan.web[1],
                           token=plan.web_token, live=live)
    server.start()
    print(f"dymn-listen: dashboard on {server.url}", file=sys.stderr, flush=True)
    return server


def build_sinks(args: argparse.Namespace, plan: DevicePlan, tagger: Any, filt: Any,
                device_name: Callable[[], str], sample_rate: int) -> list[EventSink]:
    """Clips, database and MQTT sinks in that order (a clip path is set before the row and
    the message are written; the caller's sink set runs them in list order), none without
    device options. ``--include`` / ``--exclude`` are applied by the sink set, as for the
    terminal."""
    sinks: list[EventSink] = []
    labels = tagger.labels
    try:
        if args.clips:
            sinks.append(ClipRecorder(args.clips, pre=args.clips_pre, post=args.clips_post,
                                      max_mb=args.clips_max_mb, max_days=args.clips_max_days,
                                      min_free_mb=args.clips_min_free_mb,
                                      sample_rate=sample_rate))
        if args.db:
            sinks.append(EventLog(args.db, model=Path(args.model).resolve(), device=device_name))
        if plan.mqtt is not None:
            try:
                ver = version("dymn-edge")
            except PackageNotFoundError:
                ver = ""
            sinks.append(MqttPublisher(plan.mqtt, labels, watched=plan.watched,
                                       model_name=getattr(tagger.metadata, "model_name", ""),
                                       model_file=Path(args.model).name, version=ver))
    except Exception:
        for s in sinks:  # do not leave a half-built device behind
            s.close()
        raise
    return sinks


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
_DROPPED_OPTS = ("--env-file",)  # becomes EnvironmentFile=


def systemd_unit(argv: Sequence[str], plan: DevicePlan | None = None) -> str:
    """A unit file running ``dymn-listen argv`` (minus --print-systemd-unit and --env-file)
    as a service, with paths made absolute and restart on failure; SIGHUP (reload) re-opens
    files. The checks are the caller's (:func:`check_device` and the rest of a start)."""
    exe = Path(sys.executable).parent / "dymn-listen"
    exe_s = str(exe) if exe.exists() else "dymn-listen"
    args: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--print-systemd-unit":
            continue
        opt, eq, val = a.partition("=")
        if opt in _DROPPED_OPTS:
            if not eq:
                next(it, None)
            continue
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
    env_line = (f"EnvironmentFile={str(plan.env_file).replace('%', '%%')}\n"
                if plan is not None and plan.env_file is not None else "")
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
{env_line}ExecStart={cmd}
ExecReload=/bin/kill -HUP $MAINPID
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
