"""Crash-safe files: a hidden partial file beside the target, renamed onto it when complete.

A partial file is named ``.STEM.HOST-PID.RANDOM.partial SUFFIX`` (the target's suffix kept:
loaders pick the engine by it), so that a later run can tell a partial of a process that died
(killed, power cut) from one that is still being written: only files of this host whose
process is gone are removed. A file of another host (a shared folder) or of a live process
(or of a process of another user) is never touched.

Partial files are created with mode ``0o666`` and the umask applied, as ``open()`` creates
files, not ``mkstemp``'s 0600: the final file gets the mode the user's umask says (0644
under umask 022), so a service user can read an exported model.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import secrets
import socket
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["create_partial", "remove_dead_partials", "process_gone"]

TAG = "partial"


def _host() -> str:
    """This machine's name as a file-name-safe token (no dots: they separate the fields)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def create_partial(target: Path) -> Path:
    """Create an empty hidden partial file for ``target`` beside it (same file system).

    ``O_EXCL`` with mode ``0o666``: a fresh name that nobody else holds, with the mode the
    umask gives (writers that truncate and rewrite it keep that mode).
    """
    target = Path(target)
    owner = f"{_host()}-{os.getpid()}"
    while True:
        path = target.with_name(f".{target.stem}.{owner}.{secrets.token_hex(4)}.{TAG}{target.suffix}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        os.close(fd)
        return path


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists here (a live process of another user exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_dead_partials(target: Path) -> list[Path]:
    """Remove the partial files of ``target`` left by processes of this host that are gone.

    Returns the removed paths. Files whose owner cannot be read from the name, of another
    host, of a live process or that cannot be removed (another user's) are left alone.
    """
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.stem)}\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)"
                         rf"\.[0-9a-f]+\.{TAG}{re.escape(target.suffix)}$")
    host, removed = _host(), []
    for path in target.parent.glob(f".{glob.escape(target.stem)}.*.{TAG}{glob.escape(target.suffix)}"):
        m = pattern.match(path.name)
        if m is None or m["host"] != host or not process_gone(int(m["pid"])):
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # another run removed it first
            continue
        except OSError as exc:
            log.warning("cannot remove %s, the partial file of a dead export (%s)", path, exc.strerror or exc)
            continue
        log.info("removed %s (the partial file of an export that died)", path)
        removed.append(path)
    return removed
