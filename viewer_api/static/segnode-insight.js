// Segnode status page, what the node produced and how it does: previews with measurements, numbers per
// hour, the rules at work and the dry run. No build step; uses api(), headers() and cell() from segnode.js.
"use strict";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) { if (k === "class") e.className = v; else e.setAttribute(k, v); }
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

function fmt(x, digits = 0) { return x == null ? "—" : Number(x).toFixed(digits); }

// -- previews and measurements (job detail) -----------------------------------------------------------
const previewUrls = new Map();     // object URLs by job/file, so a re-render does not fetch (and audit) again

async function previewImage(jobId, file) {
  const key = `${jobId}/${file}`;
  if (!previewUrls.has(key)) {
    const rsp = await fetch(`/api/jobs/${jobId}/preview/${encodeURIComponent(file)}`, { headers: headers() });
    if (!rsp.ok) throw new Error((await rsp.json()).error);
    previewUrls.set(key, URL.createObjectURL(await rsp.blob()));
  }
  return previewUrls.get(key);
}

function measurementTable(measurements, colours) {
  const rows = measurements.map((m) => el("tr", {}, el("td", {}, el("span", { class: "swatch", style: `background:${colours[m.number] || "#999"}` }), m.name),
    cell(fmt(m.volume_ml, 1), "num"), cell(fmt(m.mean), "num"), cell(fmt(m.min), "num"), cell(fmt(m.max), "num")));
  const unit = measurements.length ? measurements[0].unit : "HU";
  return el("table", { class: "measurements" },
    el("thead", {}, el("tr", {}, ...["Segment", "Volume mL", `Mean ${unit}`, `Min ${unit}`, `Max ${unit}`].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
}

async function renderPreviews(job) {
  const box = document.getElementById("detail-previews");
  const results = job.results || {};
  const previews = results.previews || [];
  const bySeries = new Map((results.series || []).map((s) => [s.series_instance_uid, s]));
  if (!previews.length) { box.replaceChildren(job.state === "done" ? el("p", { class: "note" }, "no preview for this job") : ""); return; }
  const parts = [];
  for (const p of previews) {
    const colours = Object.fromEntries(p.segments.map((s) => [s.number, s.colour]));
    const img = el("img", { class: "preview", alt: `${p.planes.join(", ")} planes`, width: p.width, height: p.height, "data-file": p.file });
    const legend = el("ul", { class: "legend" }, ...p.segments.map((s) => el("li", {}, el("span", { class: "swatch", style: `background:${s.colour}` }), s.name)));
    const measured = (bySeries.get(p.series_instance_uid) || {}).measurements || [];
    parts.push(el("figure", { class: "series-preview" }, img,
      el("figcaption", {}, `${p.planes.join(" · ")} through the largest segment, window ${p.window[0]}–${p.window[1]}`), legend,
      measurementTable(measured, colours)));
    previewImage(job.id, p.file).then((url) => { img.src = url; }, (e) => img.replaceWith(el("p", { class: "reason" }, e.message)));
  }
  box.replaceChildren(el("h3", {}, "Result"), ...parts);
}

// -- why this rule (job detail) -----------------------------------------------------------------------
function verdictList(verdicts) {
  return el("ul", { class: "verdicts" }, ...verdicts.map((v) => el("li", { class: v.takes ? "takes" : "not" },
    el("b", {}, v.rule), v.takes ? " takes it" : ` — ${v.why}`)));
}

async function renderJobRouting(job) {
  const box = document.getElementById("detail-routing");
  try {
    const r = await api(`/api/jobs/${job.id}/routing`);
    box.replaceChildren(el("h3", {}, "Routing"), el("p", {}, job.rule ? `Taken by rule ${job.rule}. With the rules as configured now:` : "With the rules as configured now:"),
      ...r.series.map((s) => el("div", { class: "routing-series" },
        el("p", { class: "uid" }, `${s.modality} · ${s.series_description || "(no description)"} · ${s.instance_count} instances${s.in_this_job ? "" : " (not in this job)"}`),
        verdictList(s.verdicts))));
  } catch (e) { box.replaceChildren(el("p", { class: "reason" }, e.message)); }
}

async function renderInsight(job) { await Promise.all([renderPreviews(job), renderJobRouting(job)]); }

// -- numbers per hour ----------------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// One small chart: bars (stacked when several series) or lines, 24 hours along x, the maximum labelled.
function chart(id, title, hours, series, kind) {
  const W = 300, H = 90, pad = 18, n = hours.length, bw = (W - pad) / n;
  const totals = hours.map((h) => kind === "bars" ? series.reduce((a, s) => a + (h[s.key] || 0), 0) : Math.max(0, ...series.map((s) => h[s.key] || 0)));
  const max = Math.max(1, ...totals);
  const root = svg("svg", { id, class: "chart", viewBox: `0 0 ${W} ${H + 14}`, role: "img", "aria-label": title });
  root.append(svg("title", {}, title), svg("line", { x1: pad, y1: H, x2: W, y2: H, class: "axis" }),
    svg("text", { x: 0, y: 10, class: "tick" }, fmt(max, max < 10 ? 1 : 0)), svg("text", { x: 0, y: H, class: "tick" }, "0"));
  const y = (v) => H - (v / max) * (H - 12);
  if (kind === "bars") {
    hours.forEach((h, i) => {
      let base = H;
      for (const s of series) {
        const v = h[s.key] || 0; if (!v) continue;
        const top = y(v) - (H - base);
        root.append(svg("rect", { x: pad + i * bw + 1, y: top, width: Math.max(1, bw - 2), height: base - top, class: s.cls, "data-hour": h.hour }, ));
        base = top;
      }
    });
  } else {
    for (const s of series) {
      const pts = hours.map((h, i) => h[s.key] == null ? null : `${pad + i * bw + bw / 2},${y(h[s.key])}`).filter(Boolean);
      if (pts.length) root.append(svg("polyline", { points: pts.join(" "), class: `line ${s.cls}` }));
      hours.forEach((h, i) => { if (h[s.key] != null) root.append(svg("circle", { cx: pad + i * bw + bw / 2, cy: y(h[s.key]), r: 2.5, class: s.cls })); });
    }
  }
  const first = new Date(hours[0].hour), last = new Date(hours[n - 1].hour);
  root.append(svg("text", { x: pad, y: H + 12, class: "tick" }, `${first.getHours()}:00`),
    svg("text", { x: W - 30, y: H + 12, class: "tick" }, `${last.getHours()}:00`));
  const legend = el("div", { class: "chart-legend" }, ...series.map((s) => el("span", {}, el("span", { class: `swatch ${s.cls}` }), s.label)));
  return el("figure", { class: "chart-box" }, el("figcaption", {}, title), root, legend);
}

async function renderCharts() {
  try {
    const { hours } = await api("/api/stats?hours=24");
    const sum = (k) => hours.reduce((a, h) => a + h[k], 0);
    document.getElementById("charts").replaceChildren(
      chart("chart-instances", `Instances received (${sum("instances")})`, hours, [{ key: "instances", label: "instances", cls: "c-instances" }], "bars"),
      chart("chart-jobs", `Jobs finished (${sum("finished")}) and failed (${sum("failed")})`, hours,
        [{ key: "finished", label: "finished", cls: "c-done" }, { key: "failed", label: "failed", cls: "c-failed" }], "bars"),
      chart("chart-latency", "Last instance → result delivered, s", hours,
        [{ key: "latency_p50_s", label: "p50", cls: "c-p50" }, { key: "latency_p95_s", label: "p95", cls: "c-p95" }], "lines"));
  } catch (e) { document.getElementById("charts").replaceChildren(el("p", { class: "reason" }, e.message)); }
}

// -- rules, destinations, dry run ------------------------------------------------------------------------
function describeMatch(m) {
  const parts = [];
  if (m.modality.length) parts.push(`modality ${m.modality.join("/")}`);
  if (m.body_part.length) parts.push(`body part ${m.body_part.join("/")}`);
  if (m.series_description) parts.push(`description /${m.series_description}/`);
  if (m.calling_ae.length) parts.push(`from ${m.calling_ae.join("/")}`);
  if (m.min_slices > 1) parts.push(`≥ ${m.min_slices} instances`);
  if (m.max_slices) parts.push(`≤ ${m.max_slices} instances`);
  return parts.join(", ") || "any series";
}

async function renderRules() {
  try {
    const r = await api("/api/routing");
    document.querySelector("#rules tbody").replaceChildren(...r.rules.map((rule, i) => {
      const badge = el("span", { class: "state " + (rule.model_state === "ready" ? "done" : "failed"), title: rule.model_reason }, rule.model_state);
      const tr = el("tr", { "data-rule": rule.name }, cell(i + 1), cell(rule.name), cell(describeMatch(rule.match)),
        el("td", {}, `${rule.model} `, badge), cell(rule.destinations.join(", ") || "none (kept in the outbox)"));
      return tr;
    }));
    document.querySelector("#destinations tbody").replaceChildren(...(r.destinations.length ? r.destinations.map((d) => el("tr", { "data-destination": d.name },
      cell(d.name), cell(d.kind), cell(d.kind === "dicom" ? `${d.ae_title}@${d.host}:${d.port}` : `${d.url}${d.username ? ` as ${d.username}` : ""}${d.password ? ` (password ${d.password})` : ""}`)))
      : [el("tr", {}, el("td", { colspan: 3, class: "note" }, "none configured: results stay in the outbox"))]));
  } catch (e) { document.querySelector("#rules tbody").replaceChildren(); }
}

async function dryRun(ev) {
  ev.preventDefault();
  const q = new URLSearchParams();
  for (const [k, v] of new FormData(ev.target)) if (String(v).trim() !== "") q.set(k, v);
  const out = document.getElementById("dry-run-answer");
  try {
    const a = await api(`/api/routing/dry-run?${q}`);
    out.replaceChildren(el("p", { class: a.rule ? "answer takes" : "answer not" },
      a.rule ? `Rule ${a.rule} takes it: model ${a.model}, results to ${a.destinations.join(", ") || "the outbox"}.` : "No rule takes it: the study would be ignored."),
    verdictList(a.verdicts));
  } catch (e) { out.replaceChildren(el("p", { class: "reason" }, e.message)); }
}

function startInsight() {
  document.getElementById("dry-run").addEventListener("submit", dryRun);
  renderCharts(); renderRules();
  setInterval(renderCharts, 60000); setInterval(renderRules, 60000);
}
