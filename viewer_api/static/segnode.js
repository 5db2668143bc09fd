// Segnode status page: no build step. Jobs from /api/jobs, live updates from /ws/jobs.
"use strict";
const jobs = new Map();
let token = localStorage.getItem("segnode-token") || "";
let lastSeq = 0;
let selected = null;
const STATES = ["receiving", "queued", "running", "sending", "done", "failed", "cancelled", "ignored"];
const PAGE = 200;
let older = 0;              // how many jobs beyond the first page the "Older jobs" button has fetched

function filters() {
  return { state: document.getElementById("f-state").value, modality: document.getElementById("f-modality").value,
    model: document.getElementById("f-model").value, q: document.getElementById("f-q").value.trim() };
}

function shown(job, f) {
  if (f.state && job.state !== f.state) return false;
  if (f.modality && job.modality !== f.modality) return false;
  if (f.model && job.model !== f.model) return false;
  if (!f.q) return true;
  const q = f.q.toLowerCase();
  return [job.study_instance_uid, job.patient_id, job.patient_name].some((v) => (v || "").toLowerCase().includes(q));
}

function options(id, values) {
  const select = document.getElementById(id);
  const have = new Set([...select.options].map((o) => o.value));
  for (const v of [...values].sort()) if (v && !have.has(v)) select.append(new Option(v, v));
}

// The server answers for jobs the page has not seen yet (thousands of older ones); the table filters what it has.
async function fetchJobs(offset = 0) {
  const f = filters(); const q = new URLSearchParams({ limit: PAGE, offset });
  for (const k of ["state", "modality", "model", "q"]) if (f[k]) q.set(k, f[k]);
  const note = document.getElementById("f-note");
  try {
    const body = await api(`/api/jobs?${q}`);
    for (const j of body.jobs) jobs.set(j.id, j);
    note.textContent = "";
    document.getElementById("older").disabled = body.jobs.length < PAGE;
  } catch (e) { note.textContent = e.message; }
  render();
}

function headers() { return token ? { Authorization: "Bearer " + token } : {}; }

async function api(path, options = {}) {
  const rsp = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (rsp.status === 401) {
    token = prompt("Segnode access token") || "";
    localStorage.setItem("segnode-token", token);
    return api(path, options);
  }
  const body = await rsp.json();
  if (!rsp.ok) throw new Error(body.error || rsp.statusText);
  return body;
}

function age(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 90 ? `${s.toFixed(0)} s` : s < 5400 ? `${(s / 60).toFixed(0)} min` : `${(s / 3600).toFixed(1)} h`;
}

function cell(text, cls) { const td = document.createElement("td"); if (cls) td.className = cls; td.textContent = text ?? ""; return td; }

function render() {
  const tbody = document.querySelector("#jobs tbody");
  tbody.replaceChildren();
  const f = filters();
  const sorted = [...jobs.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
  options("f-modality", new Set(sorted.map((j) => j.modality)));
  options("f-model", new Set(sorted.map((j) => j.model)));
  const visible = sorted.filter((j) => shown(j, f));
  document.getElementById("shown").textContent = `${visible.length} of ${jobs.size} jobs loaded`;
  for (const job of visible) {
    const tr = document.createElement("tr");
    tr.dataset.job = job.id; tr.tabIndex = 0;
    tr.dataset.state = job.state;
    const state = cell(""); const badge = document.createElement("span");
    badge.className = "state " + job.state; badge.textContent = job.state; state.append(badge);
    const prog = cell(""); const bar = document.createElement("div"); bar.className = "bar";
    const fill = document.createElement("div"); fill.style.width = `${Math.round(100 * (job.state === "done" ? 1 : job.progress || 0))}%`;
    bar.append(fill); prog.append(bar);
    const actions = cell("");
    if (job.state === "failed") actions.append(button("Retry", () => command(job.id, "retry")));
    if (["receiving", "queued", "running", "sending"].includes(job.state)) actions.append(button("Cancel", () => command(job.id, "cancel")));
    for (const f of (job.results && job.results.files) || []) {
      const a = document.createElement("a"); a.className = "btn"; a.textContent = f.kind.toUpperCase();
      a.href = "#"; a.onclick = (e) => { e.stopPropagation(); download(job.id, f.kind); return false; };
      actions.append(a);
    }
    const patient = job.patient_name !== undefined ? `${job.patient_name} (${job.patient_id})` : "—";
    tr.append(state, prog, cell(job.modality), cell(job.series_description), cell(patient), cell(job.model),
      cell(job.instance_count), cell(age(job.created_at)), cell(job.detail, "detail"), actions);
    tr.onclick = () => showDetail(job.id);
    tr.onkeydown = (e) => { if (e.key === "Enter") showDetail(job.id); };
    tbody.append(tr);
  }
}

function button(label, fn) { const b = document.createElement("button"); b.textContent = label; b.onclick = (e) => { e.stopPropagation(); fn(); }; return b; }

async function command(id, name) {
  try { await api(`/api/jobs/${id}/${name}`, { method: "POST" }); } catch (e) { alert(e.message); }
}

async function download(id, kind) {
  const rsp = await fetch(`/api/jobs/${id}/results/${kind}`, { headers: headers() });
  if (!rsp.ok) { alert((await rsp.json()).error); return; }
  const url = URL.createObjectURL(await rsp.blob());
  const a = document.createElement("a"); a.href = url; a.download = `${kind}-${id}.dcm`; a.click(); URL.revokeObjectURL(url);
}

async function showDetail(id) {
  selected = id;
  const job = await api(`/api/jobs/${id}`);
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-id").textContent = id.slice(0, 8);
  document.getElementById("detail-study").textContent = job.study_instance_uid;
  const ol = document.getElementById("detail-events");
  ol.replaceChildren(...job.events.map((e) => { const li = document.createElement("li");
    li.textContent = `${new Date(e.at).toLocaleTimeString()} ${e.state}${e.progress != null ? " " + Math.round(100 * e.progress) + "%" : ""} — ${e.detail}`; return li; }));
  const shownBefore = document.getElementById("detail").dataset.job;
  document.getElementById("detail").dataset.job = id;
  if (shownBefore !== id || job.state !== document.getElementById("detail").dataset.state) renderInsight(job);
  document.getElementById("detail").dataset.state = job.state;
}

async function refreshJob(id) { jobs.set(id, await api(`/api/jobs/${id}`)); render(); if (selected === id) showDetail(id); }

async function health() {
  try {
    const h = await fetch("/api/health").then((r) => r.json());
    const el = document.getElementById("health");
    el.className = "health" + (h.ok ? "" : " bad");
    el.textContent = `${h.ok ? "healthy" : "NOT OK"} · DICOM ${h.dicom.ae_title}:${h.dicom.port} · queue ${h.queue_depth} · ` +
      `disk free ${(h.disk.free_bytes / 2 ** 30).toFixed(1)} GB · inference ${h.compute.placement}`;
  } catch (e) { document.getElementById("health").textContent = "node unreachable"; }
}

// Each model as the node's start-up check found it: ready, or unavailable with the reason; warnings (e.g.
// labels coded with the node's local scheme) under it.
async function models() {
  try {
    const body = await api("/api/models");
    const tbody = document.querySelector("#models tbody");
    tbody.replaceChildren(...body.models.map((m) => {
      const tr = document.createElement("tr");
      tr.dataset.model = m.name; tr.dataset.state = m.state;
      const state = cell(""); const badge = document.createElement("span");
      badge.className = "state " + (m.state === "ready" ? "done" : "failed"); badge.textContent = m.state; state.append(badge);
      const notes = cell("", "detail");
      for (const text of [m.reason, ...(m.warnings || [])].filter(Boolean)) {
        const p = document.createElement("p"); p.className = text === m.reason ? "reason" : "warning"; p.textContent = text; notes.append(p);
      }
      tr.append(cell(m.name), state, cell(m.version), cell((m.modalities || []).join(", ")),
        cell(m.labels ? m.labels.length : ""), notes);
      return tr;
    }));
  } catch (e) { document.querySelector("#models tbody").replaceChildren(); }
}

// Refused tokens, tickets, TLS handshakes and certificates, from either door. /api/audit is for admins: a
// viewer gets 403 and the table stays hidden.
async function securityEvents() {
  const box = document.getElementById("security");
  try {
    const rsp = await fetch("/api/audit?security=true&limit=50", { headers: headers() });
    if (!rsp.ok) { box.hidden = true; return; }
    const rows = (await rsp.json()).audit;
    box.hidden = false;
    const tbody = document.querySelector("#security-events tbody");
    if (!rows.length) { const none = cell("none", "note"); none.colSpan = 5; tbody.replaceChildren(document.createElement("tr")); tbody.firstChild.append(none); return; }
    tbody.replaceChildren(...rows.map((r) => {
      const tr = document.createElement("tr"); tr.dataset.kind = r.action;
      tr.append(cell(new Date(r.at).toLocaleString()), cell(r.action), cell(r.actor === "-" ? r.role : `${r.actor} (${r.role})`),
        cell(r.remote), cell(r.detail, "detail"));
      return tr;
    }));
  } catch (e) { box.hidden = true; }
}

// A browser cannot send the Authorization header with a WebSocket, and a token in a URL would end up in logs:
// trade the token (in a header) for a single-use ticket, then open the socket with it within 30 s.
async function connect() {
  const live = document.getElementById("live");
  let ticket;
  try { ticket = (await api("/api/ws-ticket", { method: "POST" })).ticket; }
  catch (e) { live.classList.remove("on"); setTimeout(connect, 2000); return; }
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const q = new URLSearchParams({ ticket }); if (lastSeq) q.set("since", lastSeq);
  const ws = new WebSocket(`${proto}://${location.host}/ws/jobs?${q}`);
  ws.onopen = () => live.classList.add("on");
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "snapshot") { for (const j of msg.jobs) jobs.set(j.id, j); lastSeq = Math.max(lastSeq, msg.seq); render(); return; }
    if (msg.type === "resync") { lastSeq = msg.seq; return; }
    lastSeq = msg.seq;
    if (["done", "failed"].includes(msg.state)) renderCharts();
    const job = jobs.get(msg.job_id);
    if (job && job.state === msg.state) { job.progress = msg.progress; job.detail = msg.detail; render(); if (selected === msg.job_id) showDetail(msg.job_id); }
    else refreshJob(msg.job_id);
  };
  ws.onclose = () => { live.classList.remove("on"); setTimeout(connect, 2000); };
}

function keyboard() {
  options("f-state", STATES);
  for (const id of ["f-state", "f-modality", "f-model"]) document.getElementById(id).onchange = () => fetchJobs();
  let typing = null;
  document.getElementById("f-q").oninput = () => { render(); clearTimeout(typing); typing = setTimeout(() => fetchJobs(), 300); };
  document.getElementById("older").onclick = () => { older += PAGE; fetchJobs(older); };
  document.addEventListener("keydown", (e) => {
    const inField = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (e.key === "/" && !inField) { e.preventDefault(); document.getElementById("f-q").focus(); }
    if (e.key === "Escape") { document.getElementById("detail").hidden = true; selected = null; }
  });
}

async function start() {
  keyboard();
  await fetchJobs();
  health(); models(); securityEvents(); connect(); startInsight();
  setInterval(health, 5000); setInterval(render, 10000); setInterval(models, 30000); setInterval(securityEvents, 30000);
}
start();
