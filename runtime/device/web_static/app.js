// dymn-edge dashboard: live tags (server-sent events), history chart (canvas), event table
// (keyset pages), clip player with its spectrogram. No framework, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { page: null, filters: {}, lastId: undefined, labelsLoaded: 0, selected: null };
const PALETTE = ["#f0a030", "#4aa3df", "#6cc070", "#e0607e", "#b084e0", "#e8d44d", "#50c8b4", "#f07a3c",
                 "#8da0b6", "#c8a27a"];
const colours = new Map();
function colour(label) {
  if (!colours.has(label)) colours.set(label, PALETTE[colours.size % PALETTE.length]);
  return colours.get(label);
}

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" },
                                           body: JSON.stringify(body) };
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, opts));
  if (r.status === 401) { window.location = "/login"; throw new Error("not logged in"); }
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

function fmtTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}
const fmtP = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(2));
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v;
    else if (k === "style") e.style.cssText = v;  // CSSOM: allowed by the page's CSP, a style="" attribute is not
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) e.append(k);
  return e;
}

// -- now ------------------------------------------------------------------------------
function showLive(m) {
  $("status").textContent = m.live ? "live" : "log only";
  $("status").className = "status on";
  if (!m.live) { $("not-live").hidden = false; $("live-panel").hidden = true; }
  else {
    $("info").textContent = [m.engine, m.model, m.model_name, `window ${m.window_s} s`, `hop ${m.hop_s} s`]
      .filter(Boolean).join(" | ");
    const tags = $("live-tags");
    tags.replaceChildren(...(m.tags || []).map((t) => el("li", { "data-label": t.label },
      el("span", { text: t.label }),
      el("span", {}, el("div", { className: "bar", style: `width:${Math.round(100 * t.probability)}%` })),
      el("span", { className: "p", text: fmtP(t.probability) }))));
    if (m.below_level_floor) tags.append(el("li", { className: "muted", text: "(below the level floor)" }));
    const lvl = m.level_dbfs;
    $("level").textContent = lvl === null || lvl === undefined ? "silence" : `${lvl.toFixed(1)} dBFS`;
    $("level-bar").style.width = lvl === null || lvl === undefined ? "0" : `${Math.max(0, Math.min(100, (lvl + 90) / 90 * 100))}%`;
    if (m.audio_seconds !== undefined) {
      $("c-audio").textContent = `${m.audio_seconds.toFixed(1)} s`;
      $("c-rtf").textContent = `${m.rtf.toFixed(3)} (${m.mean_inference_ms.toFixed(1)} ms)`;
      $("c-overflows").textContent = m.overflows;
      $("c-dropped").textContent = `${m.dropped_seconds.toFixed(1)} s`;
      $("c-skipped").textContent = m.hops_skipped;
    }
    $("live-events").replaceChildren(...(m.events || []).slice().reverse().map((e) => el("li", {
      text: e.event === "start" ? `+ ${e.label} at ${e.start.toFixed(2)} s (${fmtP(e.probability)})`
                                : `− ${e.label} ${e.start.toFixed(2)}–${e.end.toFixed(2)} s (peak ${fmtP(e.probability)})` })));
  }
  if (m.last_id !== undefined && m.last_id !== state.lastId) {
    const first = state.lastId === undefined;
    state.lastId = m.last_id;
    if (!first) {  // new events in the log: redraw; the table only while its newest page is shown
      loadHistory().catch(console.error);
      loadLabels().catch(console.error);
      if (!state.page || !state.page.more_newer) loadPage(null).catch(console.error);
    }
  }
}

function connectLive() {
  const src = new EventSource("/api/live");
  src.onmessage = (e) => showLive(JSON.parse(e.data));
  src.onerror = () => { $("status").textContent = "offline"; $("status").className = "status off"; };
}

// -- history chart --------------------------------------------------------------------
function rangeFilter() {
  const days = Number($("range").value);
  return days > 0 ? { since: new Date(Date.now() - days * 86400e3).toISOString() } : {};
}

function bucketKeys(rows, bucket, since) {
  // every bucket from the first to now (empty ones included), as the server names them
  const step = bucket === "hour" ? 3600e3 : 86400e3;
  const start = since ? Date.parse(since) : (rows.length ? Date.parse(rows[0].bucket.length <= 10 ? rows[0].bucket + "T00:00:00Z" : rows[0].bucket) : Date.now());
  const keys = [];
  let t = Math.floor(start / step) * step;
  const end = Date.now();
  while (t <= end && keys.length < 5000) {
    const iso = new Date(t).toISOString();
    keys.push(bucket === "hour" ? iso.slice(0, 13) + ":00Z" : iso.slice(0, 10));
    t += step;
  }
  for (const r of rows) if (!keys.includes(r.bucket)) keys.push(r.bucket);
  return keys.sort();
}

function drawChart(data, since) {
  const canvas = $("chart");
  const keys = bucketKeys(data.rows, data.bucket, since);
  const stacks = new Map(keys.map((k) => [k, []]));
  const totals = {};
  for (const r of data.rows) {
    stacks.get(r.bucket).push(r);
    totals[r.label] = (totals[r.label] || 0) + r.events;
  }
  canvas.dataset.totals = JSON.stringify(totals);
  canvas.dataset.buckets = String(keys.length);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600, h = 220;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const pad = { l: 36, r: 8, t: 8, b: 22 };
  const max = Math.max(1, ...[...stacks.values()].map((s) => s.reduce((a, r) => a + r.events, 0)));
  const bw = (w - pad.l - pad.r) / Math.max(1, keys.length);
  g.fillStyle = "#8a949e"; g.font = "11px system-ui"; g.textAlign = "right";
  g.strokeStyle = "#2b333c";
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + (h - pad.t - pad.b) * (1 - i / 4);
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
    g.fillText(String(Math.round(max * i / 4)), pad.l - 4, y + 4);
  }
  keys.forEach((k, i) => {
    let y = h - pad.b;
    for (const r of stacks.get(k)) {
      const bh = (h - pad.t - pad.b) * r.events / max;
      g.fillStyle = colour(r.label);
      g.fillRect(pad.l + i * bw + (bw > 3 ? 1 : 0), y - bh, Math.max(1, bw - (bw > 3 ? 2 : 0)), bh);
      y -= bh;
    }
  });
  g.textAlign = "center"; g.fillStyle = "#8a949e";
  const every = Math.max(1, Math.ceil(keys.length / 8));
  keys.forEach((k, i) => {
    if (i % every === 0) g.fillText(data.bucket === "hour" ? k.slice(5, 13).replace("T", " ") + "h" : k.slice(5),
                                    pad.l + (i + 0.5) * bw, h - 6);
  });
  $("legend").replaceChildren(...Object.entries(totals).map(([lab, n]) =>
    el("li", { "data-label": lab }, el("i", { style: `background:${colour(lab)}` }), `${lab} ${n}`)));
  canvas.setAttribute("aria-label", "events per label: " + Object.entries(totals).map(([l, n]) => `${l} ${n}`).join(", "));
}

async function loadHistory() {
  const range = rangeFilter();
  const body = Object.assign({ bucket: $("bucket").value }, state.filters, range);
  if (state.filters.since && range.since && state.filters.since > range.since) body.since = state.filters.since;
  drawChart(await api("/api/history", body), body.since);
}

// -- table ----------------------------------------------------------------------------
function readFilters() {
  const f = {};
  const lab = $("f-label").value;
  if (lab) f.labels = [lab];
  const toIso = (v) => (v ? new Date(v).toISOString() : undefined);
  if ($("f-since").value) f.since = toIso($("f-since").value);
  if ($("f-until").value) f.until = toIso($("f-until").value);
  if ($("f-min").value !== "") f.min_prob = Number($("f-min").value);
  return f;
}

async function loadLabels() {
  const { labels } = await api("/api/labels");
  const sel = $("f-label");
  const cur = sel.value;
  sel.replaceChildren(el("option", { value: "", text: "all" }),
    ...labels.map((l) => el("option", { value: l.label, text: `${l.label} (${l.events})` })));
  sel.value = cur;
}

async function loadPage(cursor) {
  const body = Object.assign({ limit: 50 }, state.filters, cursor || {});
  const page = await api("/api/events", body);
  state.page = page;
  const tbody = $("events").tBodies[0];
  tbody.replaceChildren(...page.events.map((r) => {
    const tr = el("tr", { "data-id": r.id, "data-label": r.label, "data-start": r.start_utc },
      el("td", { text: fmtTime(r.start_utc), title: r.start_utc }), el("td", { text: r.label }),
      el("td", { text: Number(r.duration_s).toFixed(2) }), el("td", { text: fmtP(r.peak_raw_prob) }),
      el("td", { text: fmtP(r.peak_smoothed_prob) }), el("td", { text: fmtP(r.mean_prob) }),
      el("td", { text: (r.model_sha256 || "").slice(0, 8), title: r.model_sha256 || "" }),
      el("td", { text: r.clip ? "▶" : "" }));
    tr.addEventListener("click", () => showEvent(r, tr));
    return tr;
  }));
  $("newer").disabled = !page.more_newer;
  $("older").disabled = !page.more_older;
  $("page-info").textContent = page.events.length ? `${page.events.length} events` : "no events";
}

function showEvent(r, tr) {
  for (const x of document.querySelectorAll("tbody tr.selected")) x.classList.remove("selected");
  tr.classList.add("selected");
  $("detail").hidden = false;
  $("detail-title").textContent = `${r.label} at ${fmtTime(r.start_utc)}`;
  const player = $("player"), img = $("spectrogram");
  if (r.clip) {
    player.hidden = img.hidden = false;
    player.src = `/api/clip/${r.id}`;
    img.src = `/api/spectrogram/${r.id}`;
  } else {
    player.removeAttribute("src"); player.hidden = img.hidden = true;
  }
  const fields = [["start (UTC)", r.start_utc], ["end (UTC)", r.end_utc], ["duration", `${Number(r.duration_s).toFixed(2)} s`],
                  ["peak (raw)", fmtP(r.peak_raw_prob)], ["peak (smoothed)", fmtP(r.peak_smoothed_prob)],
                  ["mean", fmtP(r.mean_prob)], ["model", r.model || "–"], ["model sha256", r.model_sha256 || "–"],
                  ["device", r.device || "–"], ["host", r.host || "–"]];
  $("detail-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
}

async function refreshAll(labels) {
  try {
    await Promise.all([loadHistory(), loadPage(null), labels === false ? null : loadLabels()]);
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  } catch (e) {  // e.g. the log is still being created: try again
    console.warn(e);
    setTimeout(() => refreshAll(labels), 2000);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("bucket").addEventListener("change", loadHistory);
  $("range").addEventListener("change", loadHistory);
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); state.filters = readFilters(); refreshAll(false); });
  $("older").addEventListener("click", () => {
    const ev = state.page.events; if (ev.length) loadPage({ before: [ev[ev.length - 1].start_utc, ev[ev.length - 1].id] });
  });
  $("newer").addEventListener("click", () => {
    const ev = state.page.events; if (ev.length) loadPage({ after: [ev[0].start_utc, ev[0].id] });
  });
  window.addEventListener("resize", loadHistory);
  connectLive();
  await refreshAll(true);
});
