// The Lockstep dashboard: polls this node's JSON API (crates/node/src/ui)
// and draws four views. Plain JavaScript, no build step, no dependency.
// Every bound comes from /api/ui; every request has a timeout.
'use strict';

// Longest one request may take before the page gives up on it.
const FETCH_MS_MAX = 8000;

const state = {
  bounds: { poll_ms: 2000, history_points: 150, page_default: 25, auth: false },
  view: 'cluster',
  // Per queue: [{t, totals}] of the last `history_points` polls.
  history: new Map(),
  queues: [],
  polling: false,
};

const $ = (sel) => document.querySelector(sel);

function token() {
  return sessionStorage.getItem('lockstep-token') || '';
}

// One API call: JSON in and out, the bearer token when one is set. Throws
// an Error whose message is the API's typed error ("CODE: message").
async function api(path, body) {
  const headers = { 'Accept': 'application/json' };
  if (token()) headers['Authorization'] = 'Bearer ' + token();
  const init = { headers, signal: AbortSignal.timeout(FETCH_MS_MAX) };
  if (body !== undefined) {
    init.method = 'POST';
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new Error('UNAVAILABLE: the node does not answer (' + e.message + ')');
  }
  let json;
  try {
    json = await response.json();
  } catch (e) {
    throw new Error('INTERNAL: answer is not JSON (HTTP ' + response.status + ')');
  }
  if (!response.ok || json.error) {
    const err = json.error || { code: 'HTTP_' + response.status, message: '' };
    throw new Error(err.code + ': ' + err.message);
  }
  return json;
}

function showError(message) {
  const box = $('#error');
  box.textContent = message || '';
  box.hidden = !message;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') node.className = v;
    else if (k === 'onclick') node.addEventListener('click', v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function num(value, field) {
  return el('td', { class: 'num', 'data-field': field }, value);
}

function age(ms) {
  if (!ms) return '0 s';
  if (ms < 1000) return ms + ' ms';
  if (ms < 120000) return (ms / 1000).toFixed(1) + ' s';
  if (ms < 7200000) return Math.round(ms / 60000) + ' min';
  return Math.round(ms / 3600000) + ' h';
}

function fillBody(table, rows) {
  const tbody = $(table + ' tbody');
  tbody.replaceChildren(...rows);
}

// ---- Cluster ----

async function pollCluster() {
  const s = await api('/api/cluster');
  $('#served-by').textContent = 'node ' + s.node_id;
  const leader = s.leader_id === null || s.leader_id === undefined ? 'none' : String(s.leader_id);
  $('#leader-badge').textContent = 'leader ' + leader;
  $('#cluster-leader').textContent =
    leader + (s.leader_client_addr ? ' (' + s.leader_client_addr + ')' : '');
  $('#cluster-leader').dataset.leader = leader;
  $('#cluster-term').textContent = s.term;
  $('#cluster-commit').textContent = s.commit_index;
  $('#cluster-applied').textContent = s.applied_index;
  $('#cluster-snapshot').textContent = s.snapshot_index;
  $('#cluster-guard').textContent = s.vote_guarded ? 'up (not voting)' : 'down';
  fillBody('#members', s.members.map((m) =>
    el('tr', { 'data-member': m.id },
      el('td', {}, m.id),
      el('td', { class: 'role-' + m.role, 'data-field': 'role' }, m.role),
      el('td', {}, m.client_addr),
      el('td', {}, m.peer_addr),
      num(m.matched_index ?? '-', 'matched'),
      num(m.lag ?? '-', 'lag'))));
  $('#lag-from').textContent = s.lag_from === null || s.lag_from === undefined
    ? 'the leader did not answer, so they are not shown'
    : 'node ' + s.lag_from + (s.lag_from === s.node_id ? ' (this node)' : '');
}

// ---- Queues and their rates ----

const RATES = [
  ['enqueued', 'enqueue'],
  ['acked', 'ack'],
  ['redelivered', 'redelivery'],
  ['dead_lettered', 'dead-letter'],
];

async function pollQueues() {
  const r = await api('/api/queues');
  const now = Date.now();
  state.queues = r.queues;
  for (const q of r.queues) {
    const h = state.history.get(q.name) || [];
    h.push({ t: now, totals: q.totals });
    while (h.length > state.bounds.history_points) h.shift();
    state.history.set(q.name, h);
  }
  for (const name of [...state.history.keys()]) {
    if (!r.queues.some((q) => q.name === name)) state.history.delete(name);
  }
  fillBody('#queues', r.queues.map((q) =>
    el('tr', { 'data-queue': q.name },
      el('td', {}, q.name),
      num(q.ready, 'ready'), num(q.delayed, 'delayed'), num(q.leased, 'leased'),
      num(q.dead, 'dead'), num(q.groups, 'groups'), num(q.bytes, 'bytes'),
      el('td', { class: 'num', 'data-field': 'oldest_ready_age_ms', 'data-ms': q.oldest_ready_age_ms },
        age(q.oldest_ready_age_ms)))));
  fillQueueSelect('#groups-queue');
  fillQueueSelect('#dead-queue');
  if (state.view === 'queues') drawCharts();
}

function fillQueueSelect(sel) {
  const select = $(sel);
  const names = state.queues.map((q) => q.name);
  const have = [...select.options].map((o) => o.value);
  if (names.join('\n') === have.join('\n')) return;
  const chosen = select.value;
  select.replaceChildren(...names.map((n) => el('option', { value: n }, n)));
  if (names.includes(chosen)) select.value = chosen;
}

// Rates per second between successive polls of one total.
function rates(history, key) {
  const out = [];
  for (let i = 1; i < history.length; i++) {
    const dt = (history[i].t - history[i - 1].t) / 1000;
    const dv = history[i].totals[key] - history[i - 1].totals[key];
    // A total that went down (a new leader's state after a restore) is
    // not a rate: shown as 0.
    out.push(dt > 0 && dv >= 0 ? dv / dt : 0);
  }
  return out;
}

function sparkline(values) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 100 40');
  svg.setAttribute('preserveAspectRatio', 'none');
  // The polls kept so far, spread over the width; the y axis from 0 to
  // the highest rate shown.
  const max = Math.max(1, ...values);
  const n = Math.max(1, values.length - 1);
  const points = values.map((v, i) =>
    ((100 * i) / n).toFixed(2) + ',' + (38 - (36 * v) / max).toFixed(2));
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('points', points.join(' '));
  svg.append(line);
  return svg;
}

function drawCharts() {
  const charts = [];
  for (const q of state.queues) {
    const h = state.history.get(q.name) || [];
    for (const [key, label] of RATES) {
      const r = rates(h, key);
      const last = r.length ? r[r.length - 1] : 0;
      charts.push(el('div', { class: 'chart', 'data-queue': q.name, 'data-rate': key },
        el('div', { class: 'title' },
          el('span', {}, q.name + ' · ' + label + '/s'),
          el('span', { 'data-field': 'rate' }, last.toFixed(1))),
        sparkline(r)));
    }
  }
  $('#charts').replaceChildren(...charts);
  const seconds = Math.round((state.bounds.poll_ms * state.bounds.history_points) / 1000);
  $('#history-span').textContent = seconds / 60 + ' minutes at most (one point a poll)';
}

// ---- Groups ----

async function pollGroups() {
  const queue = $('#groups-queue').value;
  if (!queue) {
    fillBody('#groups', []);
    $('#groups-note').textContent = 'No queue yet.';
    return;
  }
  const params = new URLSearchParams({
    queue,
    status: $('#groups-status').value,
    sort: $('#groups-sort').value,
    limit: String(state.bounds.page_default),
  });
  const prefix = $('#groups-prefix').value;
  if (prefix) params.set('prefix', prefix);
  const r = await api('/api/groups?' + params);
  fillBody('#groups', r.groups.map((g) =>
    el('tr', { 'data-group': g.key },
      el('td', {}, g.key),
      num(g.backlog, 'backlog'),
      el('td', { class: 'num', 'data-field': 'head_age_ms' }, age(g.head_age_ms)),
      el('td', {}, g.lease_holder || '-'),
      num(g.attempts, 'attempts'),
      el('td', { 'data-field': 'state', class: g.paused ? 'paused' : '' },
        g.paused ? 'paused' : (g.parked_reason ? 'parked: ' + g.parked_reason : (g.lease_holder ? 'leased' : 'waiting'))),
      el('td', {}, el('button', {
        'data-action': g.paused ? 'resume' : 'pause',
        onclick: () => act(g.paused ? '/api/groups/resume' : '/api/groups/pause', { queue, group: g.key }),
      }, g.paused ? 'Resume' : 'Pause')))));
  $('#groups-note').textContent = r.truncated
    ? 'Ranked among the first ' + r.scanned + ' groups in key order.'
    : r.scanned + ' groups read.';
}

// ---- Dead letters ----

async function pollDead() {
  const queue = $('#dead-queue').value;
  if (!queue) {
    fillBody('#dead', []);
    $('#dead-note').textContent = 'No queue yet.';
    return;
  }
  const params = new URLSearchParams({ queue, limit: String(state.bounds.page_default) });
  const r = await api('/api/dead-letters?' + params);
  fillBody('#dead', r.dead_letters.map((d) =>
    el('tr', { 'data-offset': d.offset },
      num(d.offset, 'offset'),
      el('td', {}, el('code', {}, d.id)),
      el('td', {}, d.group || '-'),
      num(d.attempts, 'attempts'),
      el('td', { 'data-field': 'reason' }, d.reason),
      el('td', {}, el('ol', { class: 'history' }, ...d.history.map((a) =>
        el('li', {}, 'attempt ' + a.attempt + ': ' + a.outcome + ' at ' + new Date(a.at_ms).toISOString().slice(11, 19))))),
      el('td', {}, el('code', {}, d.payload_preview), d.payload_bytes > d.payload_preview.length ? '…' : ''),
      el('td', {},
        el('button', { 'data-action': 'requeue', onclick: () => act('/api/dead-letters/requeue', { queue, offset: d.offset }) }, 'Requeue'),
        ' ',
        el('button', { 'data-action': 'purge', class: 'danger', onclick: () => act('/api/dead-letters/purge', { queue, offsets: [d.offset] }) }, 'Purge')))));
  $('#dead-note').textContent = r.dead_letters.length + ' shown' +
    (r.next_after !== null && r.next_after !== undefined ? ', more after offset ' + r.next_after : '') + '.';
}

// ---- Actions and the poll loop ----

async function act(path, body) {
  try {
    await api(path, body);
    delete $('#error').dataset.sticky;
    showError('');
  } catch (e) {
    // Kept until the next action: a poll that works does not hide it.
    $('#error').dataset.sticky = '1';
    showError(e.message);
  }
  await poll();
}

const VIEW_POLLS = { groups: pollGroups, dead: pollDead };

// One round: the cluster and the queues always (the charts need every
// poll), and the open view's own data. Never two rounds at once.
async function poll() {
  if (state.polling) return;
  state.polling = true;
  const errors = [];
  try {
    for (const f of [pollCluster, pollQueues, VIEW_POLLS[state.view]]) {
      if (!f) continue;
      try {
        await f();
      } catch (e) {
        errors.push(e.message);
      }
    }
  } finally {
    state.polling = false;
  }
  $('#poll-state').className = errors.length ? 'bad' : 'ok';
  $('#poll-state').title = errors.length ? errors[0] : 'last poll ' + new Date().toISOString();
  document.body.dataset.polled = String(Date.now());
  if (errors.length && !$('#error').dataset.sticky) showError(errors[0]);
  else if (!$('#error').dataset.sticky) showError('');
}

function showView() {
  const view = (location.hash || '#cluster').slice(1);
  state.view = ['cluster', 'queues', 'groups', 'dead'].includes(view) ? view : 'cluster';
  for (const s of document.querySelectorAll('.view')) s.hidden = s.id !== 'view-' + state.view;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.view === state.view);
  if (state.view === 'queues') drawCharts();
  poll();
}

async function main() {
  try {
    state.bounds = await api('/api/ui');
  } catch (e) {
    showError(e.message);
  }
  const box = $('#token-box');
  box.hidden = !state.bounds.auth;
  $('#token').value = token();
  $('#token').addEventListener('change', (e) => {
    sessionStorage.setItem('lockstep-token', e.target.value.trim());
    poll();
  });
  for (const sel of ['#groups-queue', '#groups-status', '#groups-sort', '#dead-queue']) {
    $(sel).addEventListener('change', poll);
  }
  $('#groups-prefix').addEventListener('input', poll);
  $('#groups-form').addEventListener('submit', (e) => { e.preventDefault(); poll(); });
  $('#purge-all').addEventListener('click', () => {
    const queue = $('#dead-queue').value;
    if (queue && confirm('Purge every dead letter of ' + queue + '?')) {
      act('/api/dead-letters/purge', { queue, offsets: [] });
    }
  });
  window.addEventListener('hashchange', showView);
  showView();
  setInterval(poll, state.bounds.poll_ms);
}

main();
