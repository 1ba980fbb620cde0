// The web console: plain JavaScript over the service's own API (no build step, no CDN).
// The token lives in sessionStorage (this tab only); event streams are read with fetch so
// the token goes in the Authorization header, the terminal's WebSocket carries it as ?token=.
"use strict";
const $ = (s) => document.querySelector(s);
const ui = {
  token: sessionStorage.getItem("vmServiceToken") || "",
  vms: new Map(),
  selected: null,
  term: null,
  ws: null,
  watch: null,      // AbortController of the /events stream
  consoleAbort: null,
  metricsTimer: null,
  samples: [],
};

function detail(v) {
  if (v && typeof v.detail === "string") return v.detail;
  if (v && Array.isArray(v.detail)) return v.detail.map((i) => (i.loc || []).join(".") + ": " + i.msg).join("; ");
  return typeof v === "string" ? v : JSON.stringify(v);
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + ui.token };
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let v;
  try { v = JSON.parse(text); } catch { v = text; }
  if (!r.ok) { const e = new Error(detail(v) + " (" + r.status + ")"); e.status = r.status; throw e; }
  return v;
}

// Server-Sent Events over fetch: onEvent(name, data) for each event until the stream ends.
async function sse(path, onEvent, signal) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + ui.token, Accept: "text/event-stream" }, signal });
  if (!r.ok) throw new Error(detail(await r.text()) + " (" + r.status + ")");
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

function showError(msg) { $("#error").textContent = msg || ""; }

function span(secs) {
  const s = Math.max(0, Math.round(secs));
  if (s < 120) return s + "s";
  if (s < 7200) return Math.floor(s / 60) + "m";
  if (s < 172800) return Math.floor(s / 3600) + "h";
  return Math.floor(s / 86400) + "d";
}

function button(label, onClick, enabled = true) {
  const b = document.createElement("button");
  b.textContent = label;
  b.disabled = !enabled;
  b.dataset.action = label.toLowerCase();
  b.addEventListener("click", (e) => { e.stopPropagation(); onClick(); });
  return b;
}

function render() {
  const body = $("#vms");
  body.replaceChildren();
  const now = Date.now() / 1000;
  const vms = [...ui.vms.values()].sort((a, b) => a.created_at - b.created_at);
  $("#empty").hidden = vms.length > 0;
  for (const vm of vms) {
    const tr = document.createElement("tr");
    tr.dataset.id = vm.id;
    if (vm.id === ui.selected) tr.className = "selected";
    const cells = [vm.id, vm.state, vm.booted_from || "-", span(now - vm.created_at), vm.ssh_port ? vm.ssh_host + ":" + vm.ssh_port : "-"];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      td.textContent = c;
      if (i === 1) { td.className = "state state-" + vm.state; if (vm.error_reason) td.title = vm.error_reason; }
      tr.append(td);
    });
    const actions = document.createElement("td");
    actions.className = "actions";
    const running = vm.state === "running";
    actions.append(
      button("Open", () => select(vm.id)),
      button("Start", () => act(vm.id, "start"), vm.state === "stopped" || vm.state === "error"),
      button("Stop", () => act(vm.id, "stop"), running),
      button("Delete", () => remove(vm.id)),
    );
    tr.append(actions);
    tr.addEventListener("click", () => select(vm.id));
    body.append(tr);
  }
  const vm = ui.vms.get(ui.selected);
  $("#detail-state").textContent = vm ? vm.state : "";
}

async function act(id, action) {
  showError("");
  try { ui.vms.set(id, await api("POST", "/vms/" + id + "/actions", { action })); render(); } catch (e) { showError(action + ": " + e.message); }
}

async function remove(id) {
  showError("");
  try {
    await api("DELETE", "/vms/" + id);
    ui.vms.delete(id);
    if (ui.selected === id) closeDetail();
    render();
  } catch (e) { showError("delete: " + e.message); }
}

async function refresh() {
  const list = await api("GET", "/vms/");
  ui.vms = new Map(list.map((v) => [v.id, v]));
  render();
}

// Live states: the node's event stream; a VM not known yet is fetched.
async function watchEvents() {
  if (ui.watch) ui.watch.abort();
  const ctl = new AbortController();
  ui.watch = ctl;
  for (;;) {
    try {
      await sse("/events", async (name, data) => {
        const ev = JSON.parse(data);
        if (ev.kind === "step" && ev.step === "deleted") { ui.vms.delete(ev.vm_id); render(); return; }
        if (ev.kind !== "state") return;
        const vm = ui.vms.get(ev.vm_id);
        if (vm && vm.state === ev.state) return;
        try { ui.vms.set(ev.vm_id, await api("GET", "/vms/" + ev.vm_id)); } catch { /* gone meanwhile */ }
        render();
        if (ev.vm_id === ui.selected && ev.state === "running" && !ui.ws) openTerminal(ev.vm_id);
      }, ctl.signal);
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 2000));
    if (ctl.signal.aborted) return;
    refresh().catch(() => {});
  }
}

function closeDetail() {
  if (ui.ws) { ui.ws.onclose = null; ui.ws.close(); ui.ws = null; }
  if (ui.term) { ui.term.dispose(); ui.term = null; }
  if (ui.consoleAbort) { ui.consoleAbort.abort(); ui.consoleAbort = null; }
  if (ui.metricsTimer) { clearInterval(ui.metricsTimer); ui.metricsTimer = null; }
  ui.selected = null;
  $("#detail").hidden = true;
}

function select(id) {
  if (ui.selected === id) return;
  closeDetail();
  ui.selected = id;
  $("#detail").hidden = false;
  $("#detail-id").textContent = id;
  $("#console").textContent = "";
  ui.samples = [];
  render();
  followConsole(id);
  ui.metricsTimer = setInterval(() => sampleMetrics(id), 2000);
  sampleMetrics(id);
  const vm = ui.vms.get(id);
  if (vm && vm.state === "running") openTerminal(id);
  else $("#terminal-status").textContent = "The terminal opens when the VM is running.";
}

function openTerminal(id) {
  if (!window.Terminal) { $("#terminal-status").textContent = "xterm.js did not load"; return; }
  if (!ui.term) {
    ui.term = new window.Terminal({ cols: 100, rows: 28, fontSize: 13, cursorBlink: true });
    ui.term.open($("#terminal"));
    ui.term.onData((d) => { if (ui.ws && ui.ws.readyState === 1) ui.ws.send(new TextEncoder().encode(d)); });
  }
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const q = new URLSearchParams({ mode: "raw", token: ui.token, cols: ui.term.cols, rows: ui.term.rows });
  const ws = new WebSocket(proto + "//" + location.host + "/vms/" + id + "/tty?" + q);
  ws.binaryType = "arraybuffer";
  ui.ws = ws;
  $("#terminal-status").textContent = "connecting…";
  ws.onopen = () => { $("#terminal-status").textContent = "connected"; ui.term.focus(); };
  ws.onmessage = (e) => ui.term && ui.term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
  ws.onclose = (e) => {
    if (ui.ws === ws) ui.ws = null;
    $("#terminal-status").textContent = "closed (" + e.code + (e.reason ? ": " + e.reason : "") + ")";
  };
}

async function followConsole(id) {
  const ctl = new AbortController();
  ui.consoleAbort = ctl;
  const pre = $("#console");
  const dec = (d) => {
    const v = JSON.parse(d);
    if (typeof v.text === "string") return v.text;
    return atob(v.b64 || "");
  };
  try {
    await sse("/vms/" + id + "/console/stream?lines=200", (name, data) => {
      if (name === "reset") { pre.textContent = ""; return; }
      if (name !== "console") return;
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = (pre.textContent + dec(data)).slice(-200000);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }, ctl.signal);
  } catch (e) {
    if (!ctl.signal.aborted) pre.textContent += "\n[console: " + e.message + "]";
  }
}

async function sampleMetrics(id) {
  let m;
  try { m = await api("GET", "/metrics/" + id); } catch (e) { $("#metrics-text").textContent = e.message; return; }
  if (ui.selected !== id) return;
  ui.samples.push({ cpu: m.cpu_percent || 0, rss: (m.rss_bytes || 0) / 1048576 });
  ui.samples = ui.samples.slice(-90);
  $("#metrics-text").textContent = "CPU " + (m.cpu_percent ?? 0).toFixed(1) + " %, RSS " + m.rss_human + ", threads " + m.num_threads;
  drawChart();
}

function drawChart() {
  const c = $("#chart");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const n = ui.samples.length;
  if (n < 2) return;
  const line = (key, max, color) => {
    g.strokeStyle = color;
    g.beginPath();
    ui.samples.forEach((s, i) => {
      const x = (i / (n - 1)) * (c.width - 10) + 5;
      const y = c.height - 5 - (s[key] / max) * (c.height - 20);
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  };
  const cpuMax = Math.max(100, ...ui.samples.map((s) => s.cpu));
  const rssMax = Math.max(1, ...ui.samples.map((s) => s.rss)) * 1.1;
  line("cpu", cpuMax, "#2456c9");
  line("rss", rssMax, "#1f7a3a");
  g.font = "11px sans-serif";
  g.fillStyle = "#2456c9"; g.fillText("CPU %", 6, 12);
  g.fillStyle = "#1f7a3a"; g.fillText("RSS (max " + rssMax.toFixed(0) + " MiB)", 60, 12);
}

async function loadImages() {
  const sel = $("#image");
  sel.replaceChildren(new Option("(default)", ""));
  try { for (const i of await api("GET", "/images")) sel.append(new Option(i.name, i.name)); } catch { /* default only */ }
}

async function createVm(e) {
  e.preventDefault();
  showError("");
  const body = { vcpus: +$("#vcpus").value, mem_mib: +$("#mem").value, disk_gib: +$("#disk").value };
  if ($("#image").value) body.base_image = $("#image").value;
  $("#create-button").disabled = true;
  try {
    const vm = await api("POST", "/vms/", body);
    ui.vms.set(vm.id, vm);
    $("#create-status").textContent = "created " + vm.id;
    render();
    select(vm.id);
  } catch (err) {
    showError("create: " + err.message);
  } finally {
    $("#create-button").disabled = false;
  }
}

async function login(e) {
  if (e) e.preventDefault();
  const given = $("#token").value.trim();
  if (given) ui.token = given;
  $("#login-error").textContent = "";
  try {
    const health = await api("GET", "/health");
    await refresh();
    sessionStorage.setItem("vmServiceToken", ui.token);
    $("#node").textContent = health.node ? "node " + health.node : "";
    $("#login").hidden = true;
    $("#app").hidden = false;
    $("#logout").hidden = false;
    loadImages();
    watchEvents();
  } catch (err) {
    sessionStorage.removeItem("vmServiceToken");
    $("#login-error").textContent = err.status === 401 || err.status === 403 ? "The service refused this token." : "Cannot reach the service: " + err.message;
  }
}

$("#login-form").addEventListener("submit", login);
$("#create-form").addEventListener("submit", createVm);
$("#logout").addEventListener("click", () => { sessionStorage.removeItem("vmServiceToken"); location.reload(); });
setInterval(render, 5000); // ages
if (ui.token) login();

// For tests and the curious: what the terminal shows, as text.
window.vmui = {
  terminalText() {
    if (!ui.term) return "";
    const b = ui.term.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
    return lines.join("\n");
  },
  vms: () => [...ui.vms.values()],
  selected: () => ui.selected,
};
