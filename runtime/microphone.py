"""Live capture: a sounddevice callback feeding a ring buffer, inference on another thread.

The PortAudio callback must never wait for the model: it only downmixes, copies into
:class:`CaptureBuffer` under a short lock and counts ``input_overflow`` flags. The
consumer (the thread that calls :meth:`Listener.run`) drains the buffer, resamples to
32 kHz with a streaming soxr resampler (whose output does not depend on chunk sizes),
and feeds the :class:`~dymn_edge.runtime.stream.StreamingScorer`. When inference falls
behind, the scorer scores only the newest hop boundary of what was drained and counts the
others as skipped; audio itself is never reordered. If the consumer stalls so long that
the buffer fills, the oldest audio is dropped, counted and declared to the scorer as a gap
(its clock moves on; no window spans the hole).

sounddevice (and so PortAudio) is imported only in the functions that open or list
devices, so file tagging works on machines without libportaudio2.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr

from dymn_edge.audio import to_mono
from dymn_edge.errors import DeviceError
from dymn_edge.runtime.events import Event, EventTracker
from dymn_edge.runtime.sinks import EventSink, SinkSet
from dymn_edge.runtime.stream import StreamingScorer, StreamUpdate
from dymn_edge.runtime.tagger import WindowScores

log = logging.getLogger(__name__)

__all__ = ["CaptureBuffer", "Listener", "ListenStats", "import_sounddevice", "list_devices",
           "resolve_device", "pick_samplerate", "INPUT_OVERFLOW"]

#: PortAudio's paInputOverflow bit in a callback's status flags (``CallbackFlags(2)``).
INPUT_OVERFLOW = 2
#: Sample rates tried when the model rate is not accepted (first that opens wins).
CANDIDATE_RATES = (32000, 48000, 44100, 16000, 96000, 22050, 8000)
#: Seconds without any audio after which the device counts as gone.
STALL_SECONDS = 5.0


def import_sounddevice() -> Any:
    """sounddevice, or a one-line DeviceError when PortAudio is missing."""
    try:
        import sounddevice as sd  # noqa: PLC0415 (needs libportaudio2)
    except OSError as exc:  # sounddevice raises OSError when libportaudio is missing
        raise DeviceError(
            "PortAudio library not found: install it (Debian/Raspberry Pi OS: "
            f"sudo apt-get install libportaudio2) ({' '.join(str(exc).split())})") from exc
    except ImportError as exc:
        raise DeviceError("sounddevice is not installed: pip install sounddevice") from exc
    return sd


def list_devices() -> str:
    """Input devices as lines ``index  name  (channels, default rate)``; '*' = default."""
    sd = import_sounddevice()
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0]
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot query audio devices ({exc})") from exc
    lines = []
    for i, d in enumerate(devices):
        if d["max_input_channels"] <= 0:
            continue
        api = sd.query_hostapis(d["hostapi"])["name"]
        mark = "*" if i == default_in else " "
        lines.append(f"{mark}{i:3d}  {d['name']}  ({api}, {d['max_input_channels']} in, "
                     f"reports {d['default_samplerate']:g} Hz)")
    if not lines:
        raise DeviceError("no audio input devices found (is a microphone connected?)")
    return "\n".join(lines)


def resolve_device(sd: Any, spec: str | int | None) -> int:
    """Device index from an index, an exact name or a unique name substring."""
    try:
        devices = sd.query_devices()
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot query audio devices ({exc})") from exc
    inputs = [i for i, d in enumerate(devices) if d["max_input_channels"] > 0]
    if not inputs:
        raise DeviceError("no audio input devices found (is a microphone connected?)")
    if spec is None or str(spec).strip() == "":
        idx = sd.default.device[0]
        if idx is None or idx < 0 or idx not in inputs:
            idx = inputs[0]
        return int(idx)
    s = str(spec).strip()
    if s.lstrip("-").isdigit():
        idx = int(s)
        if idx not in inputs:
            raise DeviceError(f"no input device with index {idx}; dymn-listen --list-devices "
                              "shows the inputs")
        return idx
    exact = [i for i in inputs if devices[i]["name"] == s]
    if exact:
        return exact[0]
    hits = [i for i in inputs if s.lower() in devices[i]["name"].lower()]
    if len(hits) == 1:
        return hits[0]
    names = ", ".join(f"{i}: {devices[i]['name']}" for i in (hits or inputs))
    what = "matches several" if hits else "matches no"
    raise DeviceError(f"device '{s}' {what} input devices ({names}); pass an index")


def pick_samplerate(sd: Any, device: int, channels: int, preferred: int = 32000) -> int:
    """The first rate the device really opens at: the model rate, then common rates.

    ``default_samplerate`` is only a hint (PulseAudio reports 44100 whatever the source
    runs at), so each candidate is checked with ``sd.check_input_settings``.
    """
    info = sd.query_devices(device)
    rates = [preferred, *CANDIDATE_RATES, int(info["default_samplerate"])]
    seen: list[int] = []
    for r in rates:
        if r in seen:
            continue
        seen.append(r)
        try:
            sd.check_input_settings(device=device, channels=channels, dtype="float32",
                                    samplerate=r)
            return r
        except Exception:  # PortAudioError / ValueError: rate not supported
            continue
    raise DeviceError(f"input device {device} ({info['name']}) opens at none of the sample "
                      f"rates {', '.join(map(str, seen))} Hz")


class CaptureBuffer:
    """Single-producer / single-consumer ring of float32 mono samples.

    ``write`` (the audio callback) never blocks beyond a short lock and never fails: when
    the ring is full the oldest unread samples are dropped and counted.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._write = 0  # total samples written
        self._read = 0  # total samples read or dropped
        self.dropped = 0  # samples dropped because the consumer was too slow
        self._dropped_unseen = 0

    def write(self, x: np.ndarray) -> None:
        n = x.size
        if n == 0:
            return
        if n > self.capacity:
            with self._lock:
                self._note_drop(n - self.capacity)
            x = x[-self.capacity:]
            n = x.size
        with self._lock:
            overflow = self._write + n - self._read - self.capacity
            if overflow > 0:
                self._read += overflow
                self._note_drop(overflow)
            pos = self._write % self.capacity
            k = min(n, self.capacity - pos)
            self._buf[pos:pos + k] = x[:k]
            if k < n:
                self._buf[:n - k] = x[k:]
            self._write += n
        self._ready.set()

    def _note_drop(self, n: int) -> None:
        self.dropped += n
        self._dropped_unseen += n

    def read(self, timeout: float | None = None) -> tuple[np.ndarray, int]:
        """All unread samples (waits up to ``timeout`` for some) and the samples dropped
        since the previous read (they lay *before* the returned samples)."""
        if timeout and not self._ready.wait(timeout):
            return np.zeros(0, dtype=np.float32), 0
        with self._lock:
            self._ready.clear()
            n = self._write - self._read
            pos = self._read % self.capacity
            k = min(n, self.capacity - pos)
            out = np.concatenate((self._buf[pos:pos + k], self._buf[:n - k]))
            self._read += n
            lost, self._dropped_unseen = self._dropped_unseen, 0
        return out, lost


@dataclass
class ListenStats:
    """Counters of a live run; ``summary()`` is the one-line report."""

    device: str = ""
    samplerate: int = 0
    audio_seconds: float = 0.0
    hops_run: int = 0
    hops_skipped: int = 0
    overflows: int = 0
    dropped_seconds: float = 0.0
    inference_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # sink counters (mqtt, clips, ...)
    _recent_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10000))

    def add_inference(self, ms: float) -> None:
        self.inference_s += ms / 1e3
        self._recent_ms.append(ms)

    @property
    def mean_ms(self) -> float:
        return 1e3 * self.inference_s / self.hops_run if self.hops_run else 0.0

    @property
    def p95_ms(self) -> float:
        """95th percentile over the last 10,000 hops (bounded memory on week-long runs)."""
        return float(np.percentile(np.fromiter(self._recent_ms, float), 95)) if self._recent_ms else 0.0

    @property
    def rtf(self) -> float:
        """Real-time factor: inference seconds per second of audio (< 1 keeps up)."""
        return self.inference_s / self.audio_seconds if self.audio_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"audio_seconds": round(self.audio_seconds, 3), "hops_run": self.hops_run,
                "hops_skipped": self.hops_skipped, "overflows": self.overflows,
                "dropped_seconds": round(self.dropped_seconds, 3),
                "mean_inference_ms": round(self.mean_ms, 3), "p95_inference_ms": round(self.p95_ms, 3),
                "rtf": round(self.rtf, 5), "device": self.device, "samplerate": self.samplerate,
                **self.extra}

    def summary(self) -> str:
        return (f"summary: {self.audio_seconds:.1f} s audio, {self.hops_run} hops run, "
                f"{self.hops_skipped} skipped, {self.overflows} overflows, "
                f"{self.dropped_seconds:.2f} s dropped, inference mean {self.mean_ms:.1f} ms / "
                f"p95 {self.p95_ms:.1f} ms, real-time factor {self.rtf:.3f}"
                + "".join(f", {k.replace('_', ' ')} {v}" for k, v in self.extra.items()))


#: Called by the consumer for every scored hop with its events, and with the stats.
HopSink = Callable[[WindowScores, list[Event], ListenStats], None]


class Listener:
    """Capture from one input device into a scorer and an event tracker."""

    def __init__(self, scorer: StreamingScorer, tracker: EventTracker, *,
                 device: str | int | None = None, buffer_seconds: float = 30.0,
                 stall_seconds: float = STALL_SECONDS, device_rate: int | None = None,
                 sinks: "EventSink | None" = None) -> None:
        self.scorer = scorer
        self.sinks: EventSink = sinks if sinks is not None else SinkSet()
        self.reopen = threading.Event()  # set (e.g. by SIGHUP): sinks re-open their files
        self._clock = (time.time(), 0.0)  # (wall UTC, stream seconds) at the newest audio
        self._open_utc: dict[int, float] = {}
        self.tracker = tracker
        self.device_spec = device
        self.buffer_seconds = buffer_seconds
        self.stall_seconds = stall_seconds
        self.device_rate = device_rate
        self.stats = ListenStats()
        self.samplerate = scorer.sample_rate
        self.channels = 1
        self.buffer = CaptureBuffer(int(buffer_seconds * self.samplerate))

    # -- producer side (PortAudio's thread) -----------------------------------------------
    def callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """sounddevice InputStream callback: count flags, downmix, copy. Never blocks."""
        if status and getattr(status, "input_overflow", False):
            self.stats.overflows += 1
        mono = to_mono(np.asarray(indata, dtype=np.float32))  # the files' downmix, one definition
        self.buffer.write(mono.copy())

    # -- consumer side -----------------------------------------------------------------
    def open(self) -> Any:
        """Open (not start) the input stream at a rate the device accepts."""
        sd = import_sounddevice()
        dev = resolve_device(sd, self.device_spec)
        info = sd.query_devices(dev)
        self.channels = 1
        try:
            sd.check_input_settings(device=dev, channels=1, dtype="float32")
        except Exception:  # some raw hw devices open stereo only
            self.channels = max(1, min(2, int(info["max_input_channels"])))
        if self.device_rate:
            rate = int(self.device_rate)
            try:
                sd.check_input_settings(device=dev, channels=self.channels, dtype="float32", samplerate=rate)
            except Exception as exc:
                raise DeviceError(f"input device {dev} ({info['name']}) cannot open at {rate} Hz "
                                  f"({' '.join(str(exc).split())})") from exc
        else:
            rate = pick_samplerate(sd, dev, self.channels, self.scorer.sample_rate)
        self.samplerate = rate
        self.buffer = CaptureBuffer(int(self.buffer_seconds * rate))
        self.stats.device = f"{dev}: {info['name']}"
        self.stats.samplerate = rate
        try:
            stream = sd.InputStream(device=dev, channels=self.channels, samplerate=rate,
                                    dtype="float32", callback=self.callback)
        except Exception as exc:  # PortAudioError, ValueError
            raise DeviceError(f"cannot open input device {dev} ({info['name']}) at {rate} Hz: "
                              f"{' '.join(str(exc).split())}") from exc
        log.info("opened input %s at %d Hz, %d channel(s)", self.stats.device, rate, self.channels)
        return stream

    def run(self, *, duration: float | None = None, stop: threading.Event | None = None,
            on_hop: HopSink | None = None, on_tick: Callable[[ListenStats], None] | None = None) -> ListenStats:
        """Capture until ``duration`` seconds of audio were processed or ``stop`` is set.

        Ctrl-C (KeyboardInterrupt in this thread) stops cleanly too. Returns the stats;
        DeviceError when the device cannot be opened or stops delivering audio.
        """
        stop = stop or threading.Event()
        stream = self.open()
        resampler = self._make_resampler()
        limit = None if duration is None else int(round(duration * self.samplerate))
        consumed = 0
        last_audio = time.monotonic()
        try:
            stream.start()
            while not stop.is_set():
                if self.reopen.is_set():
                    self.reopen.clear()
                    self.sinks.reopen()
                x, lost = self.buffer.read(timeout=0.1)
                if lost:
                    self._gap(lost, resampler)
                    resampler = self._make_resampler()
                if x.size == 0:
                    if time.monotonic() - last_audio > self.stall_seconds:
                        raise DeviceError(f"input device {self.stats.device} delivered no audio "
                                          f"for {self.stall_seconds:g} s (disconnected?)")
                    if not stream.active and not stop.is_set():
                        raise DeviceError(f"input device {self.stats.device} stopped (disconnected?)")
                    continue
                last_audio = time.monotonic()
                if limit is not None:
                    x = x[:max(0, limit - consumed)]
                consumed += x.size
                y = resampler(x) if resampler else x
                self._consume(y, on_hop)
                if on_tick:
                    on_tick(self.stats)
                if limit is not None and consumed >= limit:
                    break
            # the audio ends here: windows still waiting for their last frames are scored
            self._handle(self.scorer.flush(), on_hop)
        except KeyboardInterrupt:
            log.info("interrupted")
        finally:
            try:
                stream.abort()  # stop() would wait for a FIFO source that may never deliver
                stream.close()
            except Exception as exc:  # a vanished device can fail to close; report, go on
                log.warning("closing the input stream failed: %s", exc)
        return self.stats

    def finish(self) -> list[Event]:
        """Close open events at the end of the run, hand them to the sinks, close the sinks
        (their counters go into ``stats.extra``)."""
        events = self.tracker.finish()
        self._dispatch(events)
        self.stats.extra.update(self.sinks.close())
        return events

    def _dispatch(self, events: list[Event]) -> None:
        """Stamp wall-clock UTC times on the events and hand them to the sinks."""
        wall, stream = self._clock
        for ev in events:
            key = ev.label.index
            if ev.kind == "start":
                ev.start_utc = wall - (stream - ev.start)
                self._open_utc[key] = ev.start_utc
            else:
                ev.start_utc = self._open_utc.pop(key, wall - (stream - ev.start))
                ev.end_utc = wall - (stream - (ev.end if ev.end is not None else stream))
            self.sinks.event(ev)

    def _make_resampler(self) -> Callable[[np.ndarray], np.ndarray] | None:
        if self.samplerate == self.scorer.sample_rate:
            return None
        rs = soxr.ResampleStream(self.samplerate, self.scorer.sample_rate, 1, dtype="float32",
                                 quality="HQ")
        return lambda x: rs.resample_chunk(x)

    def _gap(self, lost: int, resampler: Any) -> None:
        n32 = int(round(lost * self.scorer.sample_rate / self.samplerate))
        self.stats.dropped_seconds += lost / self.samplerate
        before = self.scorer.hops_skipped
        self.scorer.gap(n32)
        self.stats.hops_skipped += self.scorer.hops_skipped - before
        self.stats.audio_seconds = self.scorer.seconds
        log.warning("consumer fell %.2f s behind: audio dropped, counted as a gap", lost / self.samplerate)

    def _consume(self, y: np.ndarray, on_hop: HopSink | None) -> None:
        update = self.scorer.push(y, max_windows=1)
        self.stats.hops_skipped += update.skipped
        self.stats.audio_seconds = self.scorer.seconds
        self._clock = (time.time(), self.scorer.seconds)
        self.sinks.audio(y, self.scorer.seconds)
        self._handle(update, on_hop)

    def _handle(self, update: StreamUpdate, on_hop: HopSink | None) -> None:
        """Scores of one update -> stats, event tracker, sinks (the hop, then its events), ``on_hop``."""
        for scores, ms, level in zip(update.scores, update.inference_ms, update.levels):
            self.stats.hops_run += 1
            self.stats.add_inference(ms)
            events = self.tracker.update(scores.end, scores.probabilities, level)
            self.sinks.hop(scores, events, self.stats)
            self._dispatch(events)
            if on_hop:
                on_hop(scores, events, self.stats)
