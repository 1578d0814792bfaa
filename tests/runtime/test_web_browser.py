"""The dashboard as a person uses it, in a real headless Chromium driven by Playwright: the
page loads, the history chart and the table show the events in order, a clip plays with its
spectrogram, the login form works, the page fits a phone; live tags appear while spoken
digits are played into the virtual microphone under ``dymn-listen --web``; and 100 page
clients for 60 s change nothing for the listener (slow).

Nothing downloads a browser: Chromium is Debian's /usr/bin/chromium (apt package
``chromium``, installed by .ci/run). Without it or Playwright the tests skip with the reason;
under ``CI=true`` they fail instead. Screenshots are kept under the test's tmp_path (the
path is printed)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from conftest import in_ci

try:
    import aiohttp  # the [web] extra; the load test's clients
except ImportError:
    if in_ci():  # CI installs the test extra: a missing server is a failure there
        raise
    pytest.skip("the [web] extra (aiohttp) is not installed", allow_module_level=True)

from dymn_edge.audio import read_audio  # noqa: E402
from dymn_edge.labels import Label  # noqa: E402
from dymn_edge.runtime.device.eventlog import EventLog, open_readonly  # noqa: E402
from dymn_edge.runtime.device.web import WebServer  # noqa: E402
from dymn_edge.runtime.events import Event  # noqa: E402

from .conftest import spoken_digits  # noqa: E402
from .test_microphone import _listen_cmd, _play_into_fifo, vmic  # noqa: E402, F401 (fixture)
from .test_stream_events import _assert_digits_in_order  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--autoplay-policy=no-user-gesture-required"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COMMON = ["--json", "--every-hop", "--hop", "0.25", "--window", "1", "--on", "0.8", "--off", "0.5", "--threads", "1",
          "--device", "pulse"]
TOKEN = "phone-token-2026"


def _missing(msg: str) -> None:
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright (no browser download)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright; the browser is Debian's chromium)")
    if not Path(CHROMIUM).is_file():
        _missing(f"{CHROMIUM} not found (apt install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _digit_log(db: Path, clips: Path, fsdd_dir: Path, digits: list[int]) -> list[dict[str, Any]]:
    """One event per spoken digit, a minute apart ending now, each with its recording as the clip."""
    log = EventLog(db, device="test mic", model_sha256="cd" * 32)
    now = time.time()
    rows = []
    for k, d in enumerate(digits):
        t = now - 60.0 * (len(digits) - k)
        clip = clips / time.strftime("%Y-%m-%d", time.gmtime(t)) / f"{k:03d}_{DIGITS[d]}.flac"
        clip.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(clip), read_audio(fsdd_dir / "recordings" / f"{d}_jackson_0.wav", 32000), 32000,
                 format="FLAC", subtype="PCM_16")
        log.event(Event("end", Label(d, None, DIGITS[d]), 60.0 * k, 60.0 * k + 0.5, 0.95, mean=0.9, peak_raw=0.97,
                        start_utc=t, end_utc=t + 0.5, clip=str(clip)))
        rows.append({"digit": d, "clip": clip})
    log.close()
    return rows


def _until(page: Any, js: str, timeout: float = 20.0) -> None:
    """Poll a JS expression (page.wait_for_function evaluates strings, which the page's CSP
    refuses: the CSP stays on, as in use)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(js):
        assert time.monotonic() < deadline, f"timed out waiting for {js}"
        time.sleep(0.1)


def _open(page: Any, url: str) -> None:
    page.goto(url)
    _until(page, "Number(document.body.dataset.loaded || 0) >= 1")


def test_history_table_and_clip_in_chromium(browser: Any, fsdd_dir: Path, tmp_path: Path) -> None:
    digits = [3, 1, 4, 1, 5, 9, 2, 6]
    db, clips = tmp_path / "events.db", tmp_path / "clips"
    _digit_log(db, clips, fsdd_dir, digits)
    server = WebServer(db=db, clips=clips, port=0)
    server.start()
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        _open(page, server.url)
        # the chart: every event counted under its label
        totals = json.loads(page.get_attribute("#chart", "data-totals"))
        want: dict[str, int] = {}
        for d in digits:
            want[DIGITS[d]] = want.get(DIGITS[d], 0) + 1
        assert totals == want
        assert page.locator("#legend li").count() == len(want)
        # the table: newest first, so reversed it is the spoken order
        labels = page.eval_on_selector_all("#events tbody tr", "rs => rs.map(r => r.dataset.label)")
        assert labels[::-1] == [DIGITS[d] for d in digits]
        starts = page.eval_on_selector_all("#events tbody tr", "rs => rs.map(r => r.dataset.start)")
        assert starts == sorted(starts, reverse=True)
        # a filter: one label
        page.select_option("#f-label", "one")
        page.click("#filters button")
        _until(page, "document.querySelectorAll('#events tbody tr').length === 2")
        page.select_option("#f-label", "")
        page.click("#filters button")
        _until(page, f"document.querySelectorAll('#events tbody tr').length === {len(digits)}")
        # a clip: the audio element reads its duration, plays, and the spectrogram is drawn
        page.click("#events tbody tr:nth-child(1)")  # the newest: the last digit
        _until(page, "document.getElementById('player').duration > 0", 20)
        duration = page.evaluate("document.getElementById('player').duration")
        expected = len(read_audio(fsdd_dir / "recordings" / f"{digits[-1]}_jackson_0.wav", 32000)) / 32000
        assert abs(duration - expected) < 0.05, (duration, expected)
        page.evaluate("document.getElementById('player').play()")
        _until(page, "document.getElementById('player').currentTime > 0.1", 20)
        _until(page, "document.getElementById('spectrogram').naturalWidth > 0", 20)
        assert page.evaluate("document.getElementById('spectrogram').naturalHeight") == 256
        assert "cdcdcdcd" in page.inner_text("#detail-fields")  # the model hash
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot: {shot}")
        assert shot.stat().st_size > 10_000
        assert not errors, errors
    finally:
        page.close()
        server.stop()


def test_login_and_phone_viewport(browser: Any, fsdd_dir: Path, tmp_path: Path) -> None:
    db, clips = tmp_path / "events.db", tmp_path / "clips"
    _digit_log(db, clips, fsdd_dir, [7, 8])
    server = WebServer(db=db, clips=clips, port=0, token=TOKEN)
    server.start()
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    try:
        page.goto(server.url)
        assert page.url.endswith("/login")
        page.fill("input[name=token]", "not-the-token")
        page.click("button[type=submit]")
        assert "Wrong token" in page.content()
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        _until(page, "Number(document.body.dataset.loaded || 0) >= 1", 20)
        assert page.eval_on_selector_all("#events tbody tr", "rs => rs.map(r => r.dataset.label)") == ["eight", "seven"]
        cookies = ctx.cookies()
        assert len(cookies) == 1 and cookies[0]["httpOnly"] and cookies[0]["value"] != TOKEN
        # a phone: nothing wider than the screen but the table's own scroller
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.click("#events tbody tr:nth-child(1)")
        _until(page, "document.getElementById('player').duration > 0", 20)
        shot = tmp_path / "phone.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot: {shot}")
    finally:
        ctx.close()
        server.stop()


# -- with the listener on the virtual microphone ---------------------------------------------


class _Listen:
    """dymn-listen --web in the background: its dashboard URL from stderr, its JSON lines,
    the spoken digits written into the virtual microphone once it prints its first line."""

    def __init__(self, env: dict[str, str], wave: np.ndarray, args: list[str]) -> None:
        self.proc = subprocess.Popen(_listen_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.go = threading.Event()
        self.url: str | None = None
        self.url_ready = threading.Event()
        self.lines: list[dict[str, Any]] = []
        self.err: list[str] = []
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._out, self._err)]
        self.threads.append(threading.Thread(target=_play_into_fifo, args=(env, wave, self.proc, self.go), daemon=True))
        for t in self.threads:
            t.start()

    def _out(self) -> None:
        for line in self.proc.stdout:
            self.go.set()
            self.lines.append(json.loads(line))

    def _err(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            if "dashboard on " in line and self.url is None:
                self.url = line.split("dashboard on ")[1].strip()
                self.url_ready.set()

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in list(self.lines) if o.get("type") == "event" and o["event"] == kind]

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("dymn-listen did not stop: " + "".join(self.err)[-1500:])
        finally:
            for t in self.threads:
                t.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.mic
def test_live_tags_and_history_while_listening(browser: Any, vmic: dict[str, str], fsdd_onnx: Path,  # noqa: F811
                                               fsdd_dir: Path, tmp_path: Path) -> None:
    digits = [2, 7, 4, 9]
    wave, centres = spoken_digits(fsdd_dir, digits, gap=2.5)
    db, clips = tmp_path / "events.db", tmp_path / "clips"
    duration = len(wave) / 32000 + 9.0  # the last clip and the page's refresh fit before the stop
    run = _Listen(vmic, wave, ["--model", str(fsdd_onnx), "--duration", f"{duration:.1f}", *COMMON, "--db", str(db),
                               "--clips", str(clips), "--clips-post", "0.5", "--web", "127.0.0.1:0"])
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        assert run.url_ready.wait(120), "".join(run.err)[-2000:]
        _open(page, run.url)
        # every label shown as a live top tag with p >= 0.5, collected by the page itself
        page.evaluate("""() => { window.seen = [];
            new MutationObserver(() => { for (const li of document.querySelectorAll('#live-tags li[data-label]')) {
                const p = Number(li.querySelector('.p').textContent);
                if (p >= 0.5 && window.seen[window.seen.length - 1] !== li.dataset.label) window.seen.push(li.dataset.label);
                break; } }).observe(document.getElementById('live-tags'), {childList: true, subtree: true}); }""")
        _until(page, "document.getElementById('status').textContent === 'live'", 20)
        deadline = time.monotonic() + duration + 60
        while len(run.events("end")) < len(digits) and time.monotonic() < deadline and run.proc.poll() is None:
            time.sleep(0.2)
        ends = run.events("end")
        assert len(ends) >= len(digits), (run.lines[-5:], "".join(run.err)[-1500:])
        # the table follows the log (last_id pushed every 2 s): as many rows as events so far
        _until(page, f"document.querySelectorAll('#events tbody tr').length >= {len(ends)}", 15)
        seen = page.evaluate("window.seen")
        rows = page.eval_on_selector_all("#events tbody tr", "rs => rs.map(r => [r.dataset.label, r.dataset.id])")
        totals = json.loads(page.get_attribute("#chart", "data-totals"))
        counters = {k: page.inner_text(f"#c-{k}") for k in ("audio", "overflows", "dropped")}
        info = page.inner_text("#info")
        page.click("#events tbody tr:nth-child(1)")
        _until(page, "document.getElementById('player').duration > 0", 20)
        shot = tmp_path / "live.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot: {shot}\nlive tags seen: {seen}")
        assert run.wait(duration + 60) == 0, "".join(run.err)[-2000:]
        # live: each spoken digit was a top tag, in the order spoken
        pos = 0
        for d in digits:
            while pos < len(seen) and seen[pos] != DIGITS[d]:
                pos += 1
            assert pos < len(seen), (d, seen)
        engine, model = info.split(" | ")[:2]
        assert engine and model == fsdd_onnx.name and "window 1 s" in info and "hop 0.25 s" in info, info
        assert counters["overflows"] == "0" and counters["audio"].endswith(" s"), counters
        # history: the table (newest first) and the chart hold the events the listener wrote
        conn = open_readonly(db)
        written = [dict(r) for r in conn.execute("SELECT id, label, label_index, start_s FROM events ORDER BY id")]
        conn.close()
        shown = [(lab, int(i)) for lab, i in rows][::-1]
        assert shown == [(r["label"], r["id"]) for r in written][:len(shown)]
        _assert_digits_in_order(digits, [c + 0.25 for c in centres], [(r["label_index"], r["start_s"]) for r in written])
        assert sum(totals.values()) == len(rows)
    finally:
        page.close()
        run.kill()


@pytest.mark.mic
@pytest.mark.slow
def test_100_page_clients_for_60_s(vmic: dict[str, str], fsdd_onnx: Path, fsdd_dir: Path,  # noqa: F811
                                   tmp_path: Path) -> None:
    """100 concurrent page clients (each: the live stream, and every 2 s the chart and the
    table) for 60 s against dymn-listen --web: no event lost, the per-hop inference time as
    without them, the listener's memory flat. Numbers are printed."""
    import psutil

    digits = [2, 5, 8, 4, 3, 9, 7] * 3
    wave, centres = spoken_digits(fsdd_dir, digits, gap=1.5)
    seconds = 70.0

    def listen(name: str, clients: int) -> tuple[dict[str, Any], list[float], dict[str, int]]:
        db = tmp_path / f"{name}.db"
        run = _Listen(vmic, wave, ["--model", str(fsdd_onnx), "--duration", str(seconds), *COMMON, "--db", str(db),
                                   "--web", "127.0.0.1:0"])
        rss: list[float] = []
        got = {"messages": 0, "pages": 0, "errors": 0}
        try:
            assert run.url_ready.wait(120), "".join(run.err)[-2000:]
            proc = psutil.Process(run.proc.pid)

            async def client(session: aiohttp.ClientSession, stop: float) -> None:
                async def stream() -> None:
                    async with session.get(run.url + "api/live") as r:
                        async for line in r.content:
                            if line.startswith(b"data: "):
                                got["messages"] += 1
                            if time.monotonic() > stop:
                                break

                async def pages() -> None:
                    while time.monotonic() < stop:
                        for path, body in (("api/history", {"bucket": "hour"}), ("api/events", {"limit": 50})):
                            async with session.post(run.url + path, json=body) as r:
                                got["pages" if r.status == 200 else "errors"] += 1
                                await r.read()
                        await asyncio.sleep(2.0)

                await asyncio.gather(stream(), pages())

            async def load() -> None:
                stop = time.monotonic() + 60.0
                # no connection cap: 100 streams and their page requests at once, as 100 browsers
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90),
                                                 connector=aiohttp.TCPConnector(limit=0)) as session:
                    tasks = [asyncio.ensure_future(client(session, stop)) for _ in range(clients)]
                    while time.monotonic() < stop:
                        rss.append(proc.memory_info().rss / 1e6)
                        await asyncio.sleep(5.0)
                    await asyncio.gather(*tasks, return_exceptions=True)

            if clients:
                asyncio.run(load())
            else:
                t_end = time.monotonic() + 60.0
                while time.monotonic() < t_end:
                    rss.append(proc.memory_info().rss / 1e6)
                    time.sleep(5.0)
            assert run.wait(seconds + 90) == 0, "".join(run.err)[-2000:]
        finally:
            run.kill()
        summary = run.lines[-1]
        conn = open_readonly(db)
        written = [dict(r) for r in conn.execute("SELECT label_index, start_s FROM events ORDER BY id")]
        conn.close()
        assert summary["type"] == "summary" and len(written) == len(run.events("end")) == summary["db_events"]
        _assert_digits_in_order(digits, [c + 0.25 for c in centres], [(r["label_index"], r["start_s"]) for r in written])
        return summary, rss, got

    base, rss0, _ = listen("alone", 0)
    loaded, rss1, got = listen("loaded", 100)
    print(f"\nalone: mean {base['mean_inference_ms']} ms, p95 {base['p95_inference_ms']} ms, RSS {rss0[0]:.0f}->"
          f"{rss0[-1]:.0f} MB\n100 clients: mean {loaded['mean_inference_ms']} ms, p95 {loaded['p95_inference_ms']} ms, "
          f"RSS {rss1[0]:.0f}->{rss1[-1]:.0f} MB (max {max(rss1):.0f}), {got}\nRSS alone {rss0}\nRSS loaded {rss1}")
    assert got["errors"] == 0 and got["pages"] >= 100 * 20 and got["messages"] >= 100 * 60
    assert loaded["dropped_seconds"] == 0 and loaded["hops_skipped"] == 0 and loaded["overflows"] == 0
    # two cores shared with 100 clients: generous bounds on the inference time (it runs on its
    # own thread; the clients compete for the CPU only)
    assert loaded["mean_inference_ms"] <= 2.0 * base["mean_inference_ms"] + 5.0, (base, loaded)
    # memory: what the listener grows by alone (warm-up), the clients add less than 20 MB to
    assert (max(rss1) - rss1[0]) - (max(rss0) - rss0[0]) < 20.0, (rss0, rss1)

