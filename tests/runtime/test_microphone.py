"""Microphone path: the callback's overflow accounting, the capture buffer, torch-free imports,
and ``dymn-listen`` against the virtual microphone (PulseAudio FIFO source, real PortAudio)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import in_ci
from dymn_edge.runtime.events import EventConfig, EventTracker
from dymn_edge.runtime.microphone import CaptureBuffer, Listener
from dymn_edge.runtime.stream import StreamingScorer
from dymn_edge.runtime.tagger import Tagger

from .conftest import spoken_digits


def _listener(model: Path, hop: float = 0.25) -> Listener:
    from dymn_edge.runtime.engines import load_engine

    tagger = Tagger(load_engine(model, threads=1))
    return Listener(StreamingScorer(tagger, 1.0, hop), EventTracker(tagger.labels, EventConfig(), hop))


def test_overflow_flag_is_counted_and_reported(fsdd_onnx: Path) -> None:
    sd = pytest.importorskip("sounddevice")
    lis = _listener(fsdd_onnx)
    block = np.zeros((320, 1), np.float32)
    lis.callback(block, 320, None, sd.CallbackFlags())
    lis.callback(block, 320, None, sd.CallbackFlags(2))  # paInputOverflow
    lis.callback(block, 320, None, sd.CallbackFlags(2))
    assert lis.stats.overflows == 2
    assert "2 overflows" in lis.stats.summary()
    assert lis.stats.as_dict()["overflows"] == 2
    x, lost = lis.buffer.read()
    assert x.size == 960 and lost == 0  # audio of flagged blocks is kept, in order


def test_callback_downmixes_and_never_blocks_when_full() -> None:
    buf = CaptureBuffer(1000)
    buf.write(np.arange(600, dtype=np.float32))
    buf.write(np.arange(600, 1200, dtype=np.float32))  # consumer too slow: oldest 200 dropped
    x, lost = buf.read()
    assert lost == 200 and buf.dropped == 200
    np.testing.assert_array_equal(x, np.arange(200, 1200))
    buf.write(np.arange(5000, dtype=np.float32))
    x, lost = buf.read()
    np.testing.assert_array_equal(x, np.arange(4000, 5000))
    assert lost == 4000


def test_consumer_skips_hops_when_behind_and_counts_add_up(fsdd_onnx: Path) -> None:
    lis = _listener(fsdd_onnx)
    sr = 32000
    # 2 s at once: 8 boundaries, 1 scored (+15 ms: the window's last log-mel frames need them)
    lis._consume(np.zeros(sr * 2 + 480, np.float32), None)
    assert lis.stats.hops_run == 1 and lis.stats.hops_skipped == 7
    lis._gap(sr, None)
    assert lis.stats.dropped_seconds == 1.0 and lis.stats.hops_skipped == 11
    assert lis.stats.hops_run + lis.stats.hops_skipped == int(lis.stats.audio_seconds / 0.25)


@pytest.mark.parametrize("main", ["tag_main", "listen_main"])
def test_cli_help_imports_no_torch(main: str) -> None:
    code = ("import sys\nfrom dymn_edge.runtime.cli import " + main + "\n"
            "try:\n    " + main + "(['--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'litert_torch') "
            "or m.startswith(('dymn_edge.export', 'dymn_edge.models'))]\n"
            "print('BAD', bad, file=sys.stderr); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "examples:" in proc.stdout


def test_cli_model_run_imports_no_torch(fsdd_onnx: Path, fsdd_test_clips) -> None:
    code = ("import sys\nfrom dymn_edge.runtime.cli import tag_main\n"
            f"rc = tag_main(['--model', {str(fsdd_onnx)!r}, {str(fsdd_test_clips[0][0])!r}])\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'litert_torch')]\n"
            "sys.exit(rc or (3 if bad else 0))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]


def test_listen_without_model_or_device_is_one_line_error(tmp_path: Path) -> None:
    from dymn_edge.runtime.cli import listen_main

    assert listen_main(["--duration", "1"]) == 2
    assert listen_main(["--model", str(tmp_path / "nope.tflite")]) == 2


# -- the virtual microphone ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vmic() -> dict[str, str]:
    """Environment of the virtual microphone started by .ci/run (vmic_start)."""
    if not os.environ.get("PULSE_SERVER") or not os.environ.get("VMIC_FIFO"):
        msg = ("virtual microphone not running: source ../shared/tools/virtual-mic.sh; vmic_start "
               "(PULSE_SERVER / VMIC_FIFO unset)")
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return dict(os.environ, PULSE_SOURCE="vmic", PYTHONUNBUFFERED="1")


def _listen_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from dymn_edge.runtime.cli import listen_main; "
            "sys.exit(listen_main())", *args]


def _play_into_fifo(env: dict[str, str], signal: np.ndarray, proc: subprocess.Popen | None,
                    go: threading.Event | None = None, stop: threading.Event | None = None) -> None:
    """Write s16le 32 kHz PCM in real time (silence until ``go`` is set, so nothing is
    played while the recorder is still loading its model), then silence until the recorder
    process ``proc`` exits or ``stop`` is set (an in-process listener)."""
    pcm = (np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes()
    block = 640 * 2  # 20 ms
    silence = bytes(block)
    fd = os.open(env["VMIC_FIFO"], os.O_WRONLY)
    try:
        t0, n, i = time.monotonic(), 0, 0
        while (proc is None or proc.poll() is None) and (stop is None or not stop.is_set()):
            if go is None or go.is_set():
                os.write(fd, pcm[i:i + block] if i < len(pcm) else silence)
                i += block
            else:
                os.write(fd, silence)
            n += block
            wait = t0 + n / 2 / 32000 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
    finally:
        os.close(fd)


def _run_listen(env: dict[str, str], signal: np.ndarray, args: list[str], timeout: float = 60,
                start_on_first_line: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(_listen_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    go = threading.Event() if start_on_first_line else None
    writer = threading.Thread(target=_play_into_fifo, args=(env, signal, proc, go), daemon=True)
    writer.start()
    err_chunks: list[str] = []
    err_reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    err_reader.start()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if go is not None:
            go.set()
        if time.monotonic() > deadline:
            break
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("dymn-listen did not stop")
    writer.join(5)
    err_reader.join(5)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines), "".join(err_chunks))


@pytest.mark.mic
def test_list_devices_shows_pulse(vmic: dict[str, str]) -> None:
    proc = subprocess.run(_listen_cmd("--list-devices"), env=vmic, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "pulse" in proc.stdout


@pytest.mark.mic
def test_listen_json_tags_spoken_digits(vmic: dict[str, str], fsdd_onnx: Path, fsdd_dir: Path) -> None:
    digits = [3, 9, 1, 7]
    wave, centres = spoken_digits(fsdd_dir, digits)
    duration = 10.0
    # --on 0.75: the "1" peaks at 0.80 (per-window log-mels) / 0.799 (the stream's continuous
    # log-mel) after smoothing (test_stream_events.py): 0.8 sat on the edge
    proc = _run_listen(vmic, wave, ["--model", str(fsdd_onnx), "--duration", str(duration), "--json",
                                    "--every-hop", "--hop", "0.25", "--window", "1", "--on", "0.75",
                                    "--off", "0.5", "--threads", "1", "--device", "pulse"],
                       start_on_first_line=True)
    assert proc.returncode == 0, proc.stderr[-1500:]
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    summary = lines[-1]
    assert summary["type"] == "summary"
    hops = [o for o in lines if o["type"] == "hop"]
    starts = [(o["index"], o["start"]) for o in lines if o["type"] == "event" and o["event"] == "start"]
    assert summary["audio_seconds"] == pytest.approx(duration, abs=0.05)
    assert summary["hops_run"] == len(hops)
    assert summary["hops_run"] + summary["hops_skipped"] == int(summary["audio_seconds"] / 0.25 + 1e-6)
    assert summary["overflows"] == 0 and summary["dropped_seconds"] == 0
    assert summary["rtf"] < 1.0
    # the signal starts once the first hop is out (t >= 0.25 s of the stream): shift by that
    from .test_stream_events import _assert_digits_in_order

    _assert_digits_in_order(digits, [c + 0.25 for c in centres], starts)


@pytest.mark.mic
def test_listen_human_mode_prints_summary(vmic: dict[str, str], fsdd_onnx: Path, fsdd_dir: Path) -> None:
    wave, _ = spoken_digits(fsdd_dir, [5, 2])
    proc = _run_listen(vmic, wave, ["--model", str(fsdd_onnx), "--duration", "5", "--hop", "0.5",
                                    "--on", "0.8", "--off", "0.5"])
    assert proc.returncode == 0, proc.stderr[-1500:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("summary: 5.0 s audio,") and "hops run" in last and "real-time factor" in last
    assert "\r" not in proc.stdout  # piped: plain lines, no live status


@pytest.mark.mic
def test_listen_resamples_from_48k(vmic: dict[str, str], fsdd_onnx: Path, fsdd_dir: Path) -> None:
    digits = [4, 8]
    wave, centres = spoken_digits(fsdd_dir, digits)
    proc = _run_listen(vmic, wave, ["--model", str(fsdd_onnx), "--duration", "5", "--json", "--every-hop",
                                    "--hop", "0.25", "--on", "0.8", "--off", "0.5", "--device-rate", "48000"],
                       start_on_first_line=True)
    assert proc.returncode == 0, proc.stderr[-1500:]
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert lines[-1]["samplerate"] == 48000
    starts = [(o["index"], o["start"]) for o in lines if o["type"] == "event" and o["event"] == "start"]
    from .test_stream_events import _assert_digits_in_order

    _assert_digits_in_order(digits, [c + 0.25 for c in centres], starts)


@pytest.mark.mic
def test_listen_unsupported_rate_is_one_line_error(vmic: dict[str, str], fsdd_onnx: Path) -> None:
    proc = subprocess.run(_listen_cmd("--model", str(fsdd_onnx), "--device-rate", "1234567", "--duration", "1"),
                          env=vmic, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("dymn-listen: error: input device")


@pytest.mark.mic
def test_listen_sigterm_stops_cleanly(vmic: dict[str, str], fsdd_tflite: Path) -> None:
    proc = subprocess.Popen(_listen_cmd("--model", str(fsdd_tflite), "--json", "--every-hop", "--hop", "0.5"),
                            env=vmic, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writer = threading.Thread(target=_play_into_fifo, args=(vmic, np.zeros(32000 * 30, np.float32), proc), daemon=True)
    writer.start()
    hops = [json.loads(proc.stdout.readline()) for _ in range(2)]  # running: two hops scored
    assert [h["type"] for h in hops] == ["hop", "hop"], hops
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-1000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["type"] == "summary" and summary["audio_seconds"] >= hops[-1]["end"]


@pytest.mark.mic
def test_listen_unknown_device_is_one_line_error(vmic: dict[str, str], fsdd_onnx: Path) -> None:
    proc = subprocess.run(_listen_cmd("--model", str(fsdd_onnx), "--device", "no-such-mic", "--duration", "1"),
                          env=vmic, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("dymn-listen: error: device 'no-such-mic' matches no input devices")
