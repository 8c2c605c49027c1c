// The dprl console: reads /summary, /hosts (one page, sorted and filtered by the proxy) and
// /history every 2 s; writes limits with the admin token as a bearer header. Every value
// from the proxy is put in the page as text (textContent), never as markup: host names
// are chosen by clients.
"use strict";

const PAGE_SIZE = 100;
const REFRESH_MS = 2000;
const state = { sort: "use", order: "desc", q: "", offset: 0, total: 0, paused: false, writable: false, flash: "" };
const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem("dprl-admin-token") || "";
}

function text(tag, value, className) {
  const el = document.createElement(tag);
  el.textContent = value === null || value === undefined ? "" : String(value);
  if (className) el.className = className;
  return el;
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 120) return s + " s";
  if (s < 7200) return Math.floor(s / 60) + " min";
  return Math.floor(s / 3600) + " h";
}

function inUse(row) {
  return Math.max(row.open, row.fleet_open || 0);
}

function sparkline(history) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 22");
  if (!history || history.open.length < 2) return svg;
  const n = history.open.length;
  const top = Math.max(1, ...history.open, ...history.refused);
  for (const [series, colour] of [["open", "#4a8fd6"], ["refused", "#d0473b"]]) {
    const line = document.createElementNS(ns, "polyline");
    const points = history[series].map((v, i) => `${(i * 119) / (n - 1)},${21 - (v * 20) / top}`);
    line.setAttribute("points", points.join(" "));
    line.setAttribute("stroke", colour);
    svg.appendChild(line);
  }
  return svg;
}

async function changeLimit(host, current) {
  const answer = window.prompt(
    `New limit for ${host}: connections (0: unlimited), or a rate such as 10/s; empty removes its own`,
    String(current),
  );
  if (answer === null) return;
  const remove = answer.trim() === "";
  const response = await fetch(`/limits/${encodeURIComponent(host)}`, {
    method: remove ? "DELETE" : "PUT",
    headers: { Authorization: `Bearer ${token()}`, "X-Dprl-Source": "console" },
    body: remove ? undefined : answer.trim(),
  });
  const what = answer.includes("/") ? "rate" : "limit";
  state.flash = response.ok ? `${what} of ${host} changed` : `not changed: ${await response.text()}`;
  setTimeout(() => (state.flash = ""), 10000);
  refresh();
}

function row(host, history) {
  const tr = document.createElement("tr");
  tr.dataset.host = host.host;
  const used = inUse(host);
  const share = host.limit ? used / host.limit : 0;
  if (host.limit && share >= 1) tr.className = "full";
  else if (host.limit && share >= 0.8) tr.className = "warm";
  tr.appendChild(text("td", host.host, "host"));
  const cap = document.createElement("td");
  cap.className = "cap";
  const bar = text("span", "", "bar");
  const fill = document.createElement("span");
  fill.style.width = `${Math.min(100, share * 100)}%`;
  bar.appendChild(fill);
  cap.appendChild(bar);
  cap.appendChild(text("span", `${used} / ${host.limit || "∞"}`, "use"));
  if (host.fleet_open !== undefined) cap.title = `this worker ${host.open}, fleet ${host.fleet_open}`;
  tr.appendChild(cap);
  tr.appendChild(text("td", host.limit_from, "from"));
  tr.appendChild(text("td", host.waiting));
  tr.appendChild(text("td", host.rate || "–"));
  const next = host.next_token_in;
  tr.appendChild(text("td", next === undefined ? "–" : next ? `${next.toFixed(2)} s` : "now"));
  tr.appendChild(text("td", host.opened_per_s));
  const refused = text("td", host.refused_last_minute, "refused");
  const reasons = Object.entries(host.refusals || {}).map(([reason, n]) => `${reason} ${n}`);
  if (reasons.length) refused.title = `since the start: ${reasons.join(", ")}`;
  tr.appendChild(refused);
  const spark = document.createElement("td");
  spark.appendChild(sparkline(history));
  tr.appendChild(spark);
  const action = document.createElement("td");
  if (state.writable && token()) {
    const edit = text("button", "limit…");
    edit.type = "button";
    edit.addEventListener("click", () => changeLimit(host.host, host.limit));
    action.appendChild(edit);
  }
  tr.appendChild(action);
  return tr;
}

function query(extra) {
  const params = new URLSearchParams({ sort: state.sort, order: state.order, ...extra });
  if (state.q) params.set("q", state.q);
  return params.toString();
}

async function refresh() {
  const [summary, table, shares] = await Promise.all([
    fetch("/summary").then((r) => r.json()),
    fetch(`/hosts?${query({ offset: state.offset, limit: PAGE_SIZE })}`).then((r) => r.json()),
    fetch("/tenants").then((r) => r.json()),
  ]);
  const names = Object.keys(shares).sort();
  $("shares").textContent = names.length ? names.map((n) => `${n}=${shares[n]}`).join(" · ") : "none";
  state.writable = summary.writable;
  $("mode").textContent = summary.describe ? `${summary.mode} (${summary.describe})` : summary.mode;
  const health = $("health");
  health.textContent = summary.backend_up === null ? "" : summary.backend_up ? "Redis up" : "Redis DOWN";
  health.className = summary.backend_up === false ? "figure down" : "figure";
  $("uptime").textContent = duration(summary.uptime);
  $("clients").textContent = summary.clients;
  $("open").textContent = summary.fleet_open === null ? summary.open : `${summary.open} here, ${summary.fleet_open} fleet`;
  $("waiting").textContent = summary.waiting;
  $("refused").textContent = summary.refused_last_minute;
  $("hosts").textContent = summary.hosts;
  state.total = table.total;
  const hosts = table.hosts.map((h) => h.host);
  const history = hosts.length
    ? await fetch(`/history?hosts=${hosts.map(encodeURIComponent).join(",")}`).then((r) => r.json())
    : {};
  const rows = $("rows");
  rows.replaceChildren(...table.hosts.map((h) => row(h, history[h.host])));
  const last = Math.min(state.offset + PAGE_SIZE, state.total);
  $("page").textContent = state.total ? `${state.offset + 1}–${last} of ${state.total}` : "no host";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = last >= state.total;
  $("csv").href = `/hosts?${query({ format: "csv" })}`;
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  notice();
}

function notice() {
  const unlocked = state.writable && token() !== "";
  $("share").hidden = !unlocked;
  $("tenants").hidden = !unlocked && $("shares").textContent === "none";
  const el = $("notice");
  if (!state.writable) {
    el.textContent = "Read-only: this proxy has no --admin-token, so the console cannot change limits.";
    el.className = "";
    $("unlock").hidden = true;
  } else if (!token()) {
    el.textContent = "Read-only: changing limits needs the admin token (Unlock changes).";
    el.className = "";
  } else {
    el.textContent = state.flash || "Changes unlocked for this tab.";
    el.className = "unlocked";
    $("unlock").hidden = true;
  }
}

function loop() {
  if (!state.paused) refresh().catch((e) => ($("updated").textContent = `refresh failed: ${e}`));
  setTimeout(loop, REFRESH_MS);
}

for (const th of document.querySelectorAll("th[data-sort]")) {
  th.addEventListener("click", () => {
    const sort = th.dataset.sort;
    state.order = state.sort === sort && state.order === "desc" ? "asc" : "desc";
    state.sort = sort;
    state.offset = 0;
    for (const other of document.querySelectorAll("th")) other.className = "";
    th.className = state.order === "asc" ? "sorted asc" : "sorted";
    refresh();
  });
}
$("filter").addEventListener("input", (e) => {
  state.q = e.target.value.trim();
  state.offset = 0;
  refresh();
});
$("pause").addEventListener("click", () => {
  state.paused = !state.paused;
  $("pause").textContent = state.paused ? "Resume" : "Pause";
});
$("prev").addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - PAGE_SIZE);
  refresh();
});
$("next").addEventListener("click", () => {
  state.offset += PAGE_SIZE;
  refresh();
});
$("share").addEventListener("click", async () => {
  const answer = window.prompt("Tenant share as NAME=WEIGHT or NAME=WEIGHT:max=N% (NAME= removes it)");
  if (!answer || !answer.includes("=")) return;
  const [name, share] = [answer.slice(0, answer.indexOf("=")).trim(), answer.slice(answer.indexOf("=") + 1).trim()];
  const response = await fetch(`/tenants/${encodeURIComponent(name)}`, {
    method: share ? "PUT" : "DELETE",
    headers: { Authorization: `Bearer ${token()}`, "X-Dprl-Source": "console" },
    body: share || undefined,
  });
  state.flash = response.ok ? `share of tenant ${name} changed` : `not changed: ${await response.text()}`;
  setTimeout(() => (state.flash = ""), 10000);
  refresh();
});
$("unlock").addEventListener("click", () => {
  const given = window.prompt("Admin token (kept in this tab only)");
  if (given) sessionStorage.setItem("dprl-admin-token", given.trim());
  refresh();
});
document.querySelector('th[data-sort="use"]').className = "sorted";
loop();
