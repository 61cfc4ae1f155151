"use strict";
// Ask before what cannot be undone (forms with data-confirm).
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// Routing review by keyboard: j/k move between rows, 1-9 label the row with that route,
// x selects it for a bulk label.
const rows = () => Array.from(document.querySelectorAll("tr.decision"));
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target.closest && event.target.closest("input, select, textarea")) return;
  const all = rows();
  if (!all.length) return;
  const current = document.activeElement.closest ? document.activeElement.closest("tr.decision") : null;
  const at = all.indexOf(current);
  if (event.key === "j" || event.key === "k") {
    const next = all[Math.min(all.length - 1, Math.max(0, at + (event.key === "j" ? 1 : -1)))];
    next.focus();
    event.preventDefault();
  } else if (current && /^[1-9]$/.test(event.key)) {
    const button = current.querySelectorAll(".label-buttons button")[Number(event.key) - 1];
    if (button) { button.click(); event.preventDefault(); }
  } else if (current && event.key === "x") {
    const box = current.querySelector("input[type=checkbox]");
    box.checked = !box.checked;
    event.preventDefault();
  }
});

// Pages that follow something running reload themselves, but never under a half-filled form
// or a hand that is busy: only after a whole interval without input.
const refresh = Number(document.body.dataset.refresh || 0);
if (refresh) {
  let lastInput = Date.now();
  for (const kind of ["mousedown", "keydown", "focusin", "scroll"]) {
    window.addEventListener(kind, () => { lastInput = Date.now(); }, true);
  }
  setInterval(() => {
    const idle = Date.now() - lastInput >= refresh;
    if (idle && !document.querySelector("form:focus-within")) window.location.reload();
  }, 1000);
}

// Live: the server's counters every 3 s; rates from the difference of two readings.
const liveTable = document.getElementById("live-adapters");
if (liveTable) {
  let previous = null;
  // Histogram quantiles are bucket bounds: "at most".
  const seconds = (s) => (s === null || s === undefined ? "–" : s < 1 ? `≤ ${Math.round(s * 1000)} ms` : `≤ ${s.toFixed(2)} s`);
  const cell = (text, cls) => { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; };
  const rowFor = (table, key, attr) => {
    let row = Array.from(table.tBodies[0].rows).find((r) => r.dataset[attr] === key);
    if (!row) {
      table.tBodies[0].querySelectorAll("tr.empty").forEach((r) => r.remove());
      row = table.tBodies[0].insertRow();
      row.dataset[attr] = key;
    }
    return row;
  };
  const draw = (reading) => {
    const span = previous ? reading.time - previous.time : 0;
    for (const [ref, t] of Object.entries(reading.adapters)) {
      const before = previous && previous.adapters[ref];
      const rate = (now, then) => (span > 0 ? ((now - (then || 0)) / span).toFixed(2) : "–");
      const row = rowFor(liveTable, ref, "ref");
      const th = document.createElement("th"); th.scope = "row"; th.textContent = ref;
      row.replaceChildren(
        th,
        cell(before ? rate(t.requests, before.requests) : "–", "rps"),
        cell(before ? rate(t.prompt_tokens + t.completion_tokens, before.prompt_tokens + before.completion_tokens) : "–", "tps"),
        cell(seconds(t.first_token_p50_s)),
        cell(`${seconds(t.latency_p50_s)} / ${seconds(t.latency_p99_s)}`),
        cell(String(t.errors), "errors"),
        cell(String(t.requests), "requests"),
      );
    }
    const upstreamTable = document.getElementById("live-upstreams");
    for (const [url, u] of Object.entries(reading.upstreams)) {
      const before = previous && previous.upstreams[url];
      const row = rowFor(upstreamTable, url, "upstream");
      const th = document.createElement("th"); th.scope = "row"; th.textContent = url;
      row.replaceChildren(
        th,
        cell(u.healthy ? "yes" : "no"),
        cell(String(u.in_flight || 0)),
        cell(before && span > 0 ? ((u.requests - before.requests) / span).toFixed(2) : "–", "rps"),
        cell(u.requests ? (u.seconds / u.requests).toFixed(3) : "–"),
        cell(String(u.errors || 0)),
      );
    }
    previous = reading;
    document.getElementById("live-status").textContent = `read at ${new Date(reading.time * 1000).toLocaleTimeString()}`;
  };
  const poll = () => fetch("/console/live.json", { credentials: "same-origin" })
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
    .then(draw)
    .catch((e) => { document.getElementById("live-status").textContent = `could not read the counters: ${e.message}`; });
  poll();
  setInterval(poll, 3000);
}
