// The live page on the admin port (`/ui`): one HTML document, one stylesheet and one script, all
// served by the sidecar itself (no external scripts or fonts). The script polls /v1/status and
// redraws in place; rates are computed in the browser from counter deltas between two polls.
// Everything from the cluster is written with textContent, never as HTML.

export const UI_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>openshell-ha-sidecar · cluster</title>
<link rel="stylesheet" href="/ui/app.css">
</head>
<body>
<header>
  <h1>OpenShell HA cluster</h1>
  <span id="health" class="badge" data-testid="health">loading…</span>
  <span class="meta">seen from <b id="self">?</b> · lease holder <b id="lease" data-testid="lease">?</b> · updated <span id="updated" data-testid="updated">never</span></span>
</header>
<ul id="problems" data-testid="problems"></ul>
<main>
  <section class="wide">
    <h2>Replicas</h2>
    <table id="replicas" data-testid="replicas">
      <thead><tr><th>replica</th><th>state</th><th>heartbeat</th><th>version</th><th>sessions</th><th class="bar-col">sessions per replica</th><th>tunnels</th><th>streams</th><th>held</th><th>shadows</th><th>limit policy</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section>
    <h2>Totals</h2>
    <dl class="totals">
      <div><dt>live replicas</dt><dd id="t-live" data-testid="live-replicas">–</dd></div>
      <div><dt>owned sandboxes</dt><dd id="t-owned" data-testid="owned">–</dd></div>
      <div><dt>tunnels</dt><dd id="t-tunnels">–</dd></div>
      <div><dt>streams</dt><dd id="t-streams">–</dd></div>
      <div><dt>held requests</dt><dd id="t-held" data-testid="held">–</dd></div>
      <div><dt>pending store writes</dt><dd id="t-pending">–</dd></div>
    </dl>
    <h3>Forwards per second (all replicas)</h3>
    <svg id="spark" data-testid="spark" viewBox="0 0 300 50" preserveAspectRatio="none"><polyline points=""/></svg>
    <div class="meta"><span id="fwd-rate" data-testid="forward-rate">0.0</span>/s now</div>
  </section>
  <section>
    <h2>Forwards by class and result</h2>
    <table id="forwards" data-testid="forwards">
      <thead><tr><th>class</th><th>result</th><th>per second</th><th>total</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section>
    <h2>Handoffs</h2>
    <table id="handoffs" data-testid="handoffs"><thead><tr><th>fenced by</th><th>per minute</th><th>total</th></tr></thead><tbody></tbody></table>
    <h2>Limit refusals</h2>
    <table id="refusals" data-testid="refusals"><thead><tr><th>rule</th><th>per minute</th><th>total</th></tr></thead><tbody></tbody></table>
    <h2>Largest limit users</h2>
    <table id="limit-users"><thead><tr><th>rule</th><th>key</th><th>slots</th></tr></thead><tbody></tbody></table>
  </section>
</main>
<footer>Polled every 2 s from <code>/v1/status</code> · <code>openshell-ha-sidecar explain SANDBOX</code> explains one sandbox</footer>
<script src="/ui/app.js"></script>
</body>
</html>
`;

export const UI_CSS = `
:root { --fg:#1d2330; --muted:#5d6678; --line:#dde1e8; --bg:#f6f7f9; --ok:#1f7a3f; --bad:#b3261e; --warn:#9a6700; --accent:#2f5fb3; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color:var(--fg); background:var(--bg); }
header { display:flex; gap:16px; align-items:baseline; flex-wrap:wrap; padding:14px 20px; background:#fff; border-bottom:1px solid var(--line); }
h1 { font-size:20px; margin:0; }
h2 { font-size:15px; margin:0 0 8px; }
h3 { font-size:13px; margin:14px 0 4px; color:var(--muted); font-weight:600; }
.meta { color:var(--muted); }
.badge { padding:2px 10px; border-radius:10px; font-weight:600; background:#e8eaee; }
.badge.ok { background:#dff3e5; color:var(--ok); }
.badge.bad { background:#fbe3e1; color:var(--bad); }
#problems { margin:0; padding:0 20px; list-style:none; }
#problems li { margin:8px 0 0; padding:6px 10px; border-radius:6px; }
#problems li.problem { background:#fbe3e1; color:var(--bad); }
#problems li.warning { background:#fff4d6; color:var(--warn); }
main { display:grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap:16px; padding:16px 20px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 14px; min-width:0; }
section.wide { grid-column: 1 / -1; }
table { border-collapse:collapse; width:100%; font-variant-numeric: tabular-nums; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); white-space:nowrap; }
th { color:var(--muted); font-weight:600; font-size:12px; }
td.num { text-align:right; }
.bar-col { width:22%; }
.bar { height:10px; background:var(--accent); border-radius:3px; min-width:2px; }
.dead { color:var(--bad); }
.draining { color:var(--warn); }
.totals { display:grid; grid-template-columns: repeat(3, 1fr); gap:8px; margin:0; }
.totals div { background:var(--bg); border-radius:6px; padding:6px 8px; }
dt { color:var(--muted); font-size:12px; }
dd { margin:0; font-size:20px; font-weight:600; font-variant-numeric: tabular-nums; }
svg { width:100%; height:50px; background:var(--bg); border-radius:6px; }
polyline { fill:none; stroke:var(--accent); stroke-width:2; vector-effect: non-scaling-stroke; }
footer { padding:0 20px 16px; color:var(--muted); font-size:12px; }
@media (max-width: 1100px) { main { grid-template-columns: 1fr 1fr; } }
`;

export const UI_JS = `'use strict';
const POLL_MS = 2000;
const HANDOFF_NAMES = { none: 'first claim (no previous owner)', 'same-replica': 'same replica (reconnect)', acknowledged: 'previous owner acknowledged', 'peer-refused': 'previous owner gone (port refused)', 'lease-expired': 'previous owner lease expired', timeout: 'timeout (unfenced)', skipped: 'skipped (handoff-mode off)' };
let prev = null;
const history = [];

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function num(v) { return v === null || v === undefined ? '–' : String(v); }
function secs(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 0) return 'expired ' + Math.round(-ms / 1000) + ' s ago';
  return ms < 10000 ? (ms / 1000).toFixed(1) + ' s' : Math.round(ms / 1000) + ' s';
}
function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
  if (rows.length === 0) {
    const tr = el('tr');
    const td = el('td', 'none yet', 'meta');
    td.colSpan = 8;
    tr.append(td);
    tbody.append(tr);
  }
}
function sumBy(replicas, pick, keyOf) {
  const out = new Map();
  for (const r of replicas) {
    if (!r.runtime) continue;
    for (const s of pick(r.runtime)) {
      const k = keyOf(s.labels);
      out.set(k, (out.get(k) || 0) + s.value);
    }
  }
  return out;
}
function rate(now, before, key, dtS, per) {
  if (!before || dtS <= 0) return 0;
  const d = (now.get(key) || 0) - (before.get(key) || 0);
  return Math.max(0, d) / dtS * per;
}

function render(st) {
  const t = Date.now();
  const live = st.replicas.filter((r) => r.live);
  const health = document.getElementById('health');
  health.textContent = st.healthy ? 'healthy' : 'unhealthy';
  health.className = 'badge ' + (st.healthy ? 'ok' : 'bad');
  document.getElementById('lease').textContent = st.leaseHolder ? st.leaseHolder.holder + ' (renewed ' + secs(st.leaseHolder.renewedAgoMs) + ' ago)' : 'none';
  document.getElementById('self').textContent = st.self || '?';
  document.getElementById('updated').textContent = new Date(st.generatedAtMs).toLocaleTimeString();
  document.getElementById('problems').replaceChildren(
    ...st.problems.map((p) => el('li', p, 'problem')),
    ...st.warnings.map((w) => el('li', w, 'warning')),
  );

  const maxSessions = Math.max(1, ...st.replicas.map((r) => r.runtime ? r.runtime.sessions : r.owned));
  fill(document.querySelector('#replicas tbody'), st.replicas.map((r) => {
    const tr = el('tr');
    tr.dataset.replica = r.replicaId;
    const rt = r.runtime;
    const sessions = rt ? rt.sessions : r.owned;
    const bar = el('div', null, 'bar');
    bar.style.width = (100 * sessions / maxSessions) + '%';
    const barCell = el('td');
    barCell.append(bar);
    tr.append(
      el('td', r.replicaId),
      el('td', r.live ? r.state : 'dead', r.live ? (r.state === 'draining' ? 'draining' : '') : 'dead'),
      el('td', secs(r.heartbeatAgeMs) + ' ago'),
      el('td', r.version),
      el('td', sessions, 'num'),
      barCell,
      el('td', rt ? rt.tunnels : '–', 'num'),
      el('td', rt ? rt.streams : '–', 'num'),
      el('td', rt ? rt.heldRequests : '–', 'num'),
      el('td', rt ? rt.shadowSessions + ' out / ' + rt.shadowsHosted + ' in' : '–'),
      el('td', rt ? rt.limitPolicy : (r.runtimeError || '–')),
    );
    return tr;
  }));

  document.getElementById('t-live').textContent = st.totals.live + ' / ' + st.totals.replicas;
  document.getElementById('t-owned').textContent = num(st.totals.ownedSandboxes);
  document.getElementById('t-tunnels').textContent = num(st.totals.tunnels);
  document.getElementById('t-streams').textContent = num(st.totals.streams);
  document.getElementById('t-held').textContent = num(st.totals.heldRequests);
  document.getElementById('t-pending').textContent = num(st.totals.pendingStoreWrites);

  const forwards = sumBy(live, (rt) => rt.counters.forwards, (l) => l.class + '\\u0000' + l.outcome);
  const handoffs = sumBy(live, (rt) => rt.counters.handoffs, (l) => l.reason);
  const refusals = sumBy(live, (rt) => rt.counters.limitRefusals, (l) => l.rule);
  const dtS = prev ? (t - prev.t) / 1000 : 0;
  let total = 0;
  const fwdRows = [...forwards.keys()].sort().map((k) => {
    const [cls, outcome] = k.split('\\u0000');
    const r = rate(forwards, prev && prev.forwards, k, dtS, 1);
    total += r;
    const tr = el('tr');
    tr.dataset.key = cls + '/' + outcome;
    tr.append(el('td', cls), el('td', outcome, outcome === 'ok' ? '' : 'draining'), el('td', r.toFixed(1), 'num'), el('td', forwards.get(k), 'num'));
    return tr;
  });
  fill(document.querySelector('#forwards tbody'), fwdRows);
  document.getElementById('fwd-rate').textContent = total.toFixed(1);
  if (prev) {
    history.push(total);
    if (history.length > 60) history.shift();
    const max = Math.max(1, ...history);
    const step = 300 / Math.max(1, history.length - 1);
    const pts = history.map((v, i) => (i * step).toFixed(1) + ',' + (48 - 46 * v / max).toFixed(1)).join(' ');
    document.querySelector('#spark polyline').setAttribute('points', pts);
  }
  const perMinute = (m, before, names) => [...m.keys()].sort().map((k) => {
    const tr = el('tr');
    tr.append(el('td', (names && names[k]) || k), el('td', rate(m, before, k, dtS, 60).toFixed(1), 'num'), el('td', m.get(k), 'num'));
    return tr;
  });
  fill(document.querySelector('#handoffs tbody'), perMinute(handoffs, prev && prev.handoffs, HANDOFF_NAMES).filter((tr) => tr.lastChild.textContent !== '0'));
  fill(document.querySelector('#refusals tbody'), perMinute(refusals, prev && prev.refusals));
  fill(document.querySelector('#limit-users tbody'), st.topLimitUsers.map((u) => {
    const tr = el('tr');
    tr.append(el('td', u.rule), el('td', u.key), el('td', u.held, 'num'));
    return tr;
  }));
  prev = { t, forwards, handoffs, refusals };
}

async function poll() {
  try {
    const res = await fetch('/v1/status', { cache: 'no-store' });
    if (!res.ok) throw new Error('HTTP ' + res.status);
    render(await res.json());
  } catch (err) {
    const health = document.getElementById('health');
    health.textContent = 'no answer: ' + err.message;
    health.className = 'badge bad';
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
poll();
`;
