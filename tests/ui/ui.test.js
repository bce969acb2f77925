// The dashboard in a real browser (headless Debian chromium, driven by
// playwright-core) against the real 3-node cluster scripts/ui-test starts.
// It loads every view, checks the numbers shown against the CLI's
// GetQueue, ListGroups, ListDeadLetters and Cluster.Status, pauses and
// resumes a group and requeues and purges dead letters through the page,
// kills the leader (SIGKILL) and sees the page follow the new one, and
// saves a screenshot of each view. Every wait is bounded; the whole test
// is bounded by UI_TEST_TIMEOUT_S. Run it through scripts/ui-test.
'use strict';

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run scripts/ui-test`);
  return v;
};
const BIN = env('LOCKSTEP_BIN');
const NET = env('UI_NET');
const SHOTS = env('UI_SCREENSHOTS');
const CHROMIUM = env('UI_CHROMIUM');
// The script's temporary directory, removed by its trap however this ends.
const TMP = env('UI_TMP');
const TEST_TIMEOUT_S = Number(env('UI_TEST_TIMEOUT_S'));
// id -> pid of each node process, "1=123 2=456 3=789".
const NODE_PIDS = new Map(env('UI_NODE_PIDS').split(' ').map((p) => p.split('=').map(Number)));
// Longest one CLI call may take.
const CLI_MS_MAX = 15000;
// Longest the page may take to show what a wait expects (a few polls).
const WAIT_MS_MAX = 20000;
// Longest a new leader may take to be elected and shown after a kill.
const FAILOVER_MS_MAX = 40000;
// The flags Debian's chromium needs on a machine with no network.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

let passed = 0;
function check(ok, what) {
  if (!ok) throw new Error('FAIL: ' + what);
  passed += 1;
  console.log('ok: ' + what);
}

function cli(args, addr) {
  const extra = addr ? ['--addr', addr] : [];
  return execFileSync(BIN, [...extra, ...args], {
    timeout: CLI_MS_MAX,
    encoding: 'utf8',
    env: { ...process.env, NO_COLOR: '1' },
  });
}

const cliJson = (args, addr) => JSON.parse(cli(['--json', ...args], addr));

// `lockstep cluster status` of one node, parsed from its text.
function status(id) {
  const text = cli(['cluster', 'status'], `${NET}.${id}:7100`);
  const head = text.match(/^node (\d+) term (\d+) leader (\S+) applied (\d+)/m);
  if (!head) throw new Error('cannot read `cluster status`: ' + text);
  const members = new Map();
  for (const m of text.matchAll(/^(\d+)\s+(leader|follower|learner|candidate)\s+(\S+)\s+(\S+)\s+(\d+)\s*$/gm)) {
    members.set(Number(m[1]), m[2]);
  }
  return { node: Number(head[1]), term: Number(head[2]), leader: head[3], applied: Number(head[4]), members };
}

async function until(what, ms, f) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`FAIL: ${what} not within ${ms} ms` + (last ? ` (last error: ${last.message})` : ''));
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

const text = (page, sel) => page.locator(sel).first().textContent({ timeout: WAIT_MS_MAX });

// Waits for the page's next full poll round to finish.
async function nextPoll(page) {
  const before = await page.evaluate(() => document.body.dataset.polled || '0');
  await until('a poll of the page', WAIT_MS_MAX, () =>
    page.evaluate((b) => (document.body.dataset.polled || '0') !== b, before));
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, name + '.png'), fullPage: true });
}

async function view(page, name, ready) {
  await page.click(`nav a[data-view="${name}"]`);
  await page.locator(ready).first().waitFor({ state: 'attached', timeout: WAIT_MS_MAX });
}

async function rowNumbers(page, sel, fields) {
  const out = {};
  for (const f of fields) out[f] = Number(await text(page, `${sel} [data-field="${f}"]`));
  return out;
}

async function main() {
  const started = status(1);
  const leader = Number(started.leader);
  check(started.members.size === 3 && leader > 0, `a 3-node cluster with leader ${leader}`);
  // The page is opened on a follower, which outlives the leader's kill.
  const F = [1, 2, 3].find((id) => id !== leader);
  const userDataDir = fs.mkdtempSync(path.join(TMP, 'chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: WAIT_MS_MAX,
    viewport: { width: 1200, height: 760 },
  });
  const errors = [];
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(WAIT_MS_MAX);
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`http://${NET}.${F}:7103/#cluster`, { timeout: WAIT_MS_MAX });

    // ---- Cluster: against Cluster.Status of the same node ----
    await until('the cluster view filled', WAIT_MS_MAX, async () => (await text(page, '#cluster-term')) !== '-');
    let matched = false;
    for (let tries = 0; tries < 3 && !matched; tries++) {
      const before = status(F);
      await nextPoll(page);
      const shown = {
        term: Number(await text(page, '#cluster-term')),
        leader: await page.locator('#cluster-leader').getAttribute('data-leader'),
        applied: Number(await text(page, '#cluster-applied')),
        commit: Number(await text(page, '#cluster-commit')),
      };
      const after = status(F);
      matched = before.term === after.term && shown.term === after.term &&
        shown.leader === after.leader && before.applied <= shown.applied &&
        shown.applied <= after.applied && shown.commit >= shown.applied;
      if (matched) {
        check(true, `cluster view: term ${shown.term}, leader ${shown.leader}, applied ${shown.applied} ` +
          `(Cluster.Status said ${before.applied}..${after.applied}), commit ${shown.commit}`);
        for (const [id, role] of after.members) {
          check((await text(page, `#members tr[data-member="${id}"] [data-field="role"]`)) === role,
            `member ${id} shown as ${role}`);
        }
      }
    }
    check(matched, 'the cluster view agrees with Cluster.Status');
    await until('each node\'s lag, asked of the leader', WAIT_MS_MAX, async () =>
      (await text(page, '#lag-from')).startsWith(`node ${leader}`) &&
      (await page.locator('#members [data-field="lag"]').allTextContents()).every((l) => /^\d+$/.test(l)));
    const lags = await page.locator('#members [data-field="lag"]').allTextContents();
    check(true, `lag per node shown from the leader's status: ${lags.join(', ')}`);
    check((await text(page, '#cluster-guard')) === 'down', 'vote guard shown down');
    await shot(page, 'cluster');

    // ---- Groups: top by backlog, search, pause and resume ----
    await view(page, 'groups', '#groups-queue option[value="audit"]');
    await page.selectOption('#groups-queue', 'audit');
    await page.selectOption('#groups-sort', 'backlog');
    const truthGroups = cliJson(['groups', 'list', 'audit']);
    await until('audit groups shown by backlog', WAIT_MS_MAX, async () =>
      (await page.locator('#groups tbody tr').count()) === 3 &&
      (await page.locator('#groups tbody tr').first().getAttribute('data-group')) === 'a-1');
    for (const g of truthGroups) {
      const shown = Number(await text(page, `#groups tr[data-group="${g.group}"] [data-field="backlog"]`));
      check(shown === g.backlog, `group ${g.group}: backlog ${shown} as ListGroups says`);
    }
    await page.fill('#groups-prefix', 'a-');
    await until('the key prefix search', WAIT_MS_MAX, async () =>
      (await page.locator('#groups tbody tr').count()) === 2 &&
      (await page.locator('#groups tr[data-group="b-1"]').count()) === 0);
    check(true, 'search by key prefix `a-` shows a-1 and a-2 only');
    await page.fill('#groups-prefix', '');
    await page.click('#groups tr[data-group="a-2"] button[data-action="pause"]');
    await until('a-2 shown paused', WAIT_MS_MAX, async () =>
      (await text(page, '#groups tr[data-group="a-2"] [data-field="state"]')) === 'paused');
    check(cliJson(['groups', 'list', 'audit']).find((g) => g.group === 'a-2').paused === true,
      'pausing a-2 through the page paused it (ListGroups)');
    await page.selectOption('#groups-status', 'paused');
    await until('the paused filter', WAIT_MS_MAX, async () =>
      (await page.locator('#groups tbody tr').count()) === 1);
    check(true, 'status filter `paused` shows a-2 alone');
    await page.selectOption('#groups-status', 'any');
    await until('every group again', WAIT_MS_MAX, async () =>
      (await page.locator('#groups tbody tr').count()) === 3);
    await shot(page, 'groups');
    await page.click('#groups tr[data-group="a-2"] button[data-action="resume"]');
    await until('a-2 shown resumed', WAIT_MS_MAX, async () =>
      (await text(page, '#groups tr[data-group="a-2"] [data-field="state"]')) === 'waiting');
    check(cliJson(['groups', 'list', 'audit']).find((g) => g.group === 'a-2').paused === false,
      'resuming a-2 through the page resumed it (ListGroups)');
    await page.selectOption('#groups-queue', 'orders');
    await until('the loaded queue\'s groups', WAIT_MS_MAX, async () =>
      (await page.locator('#groups tbody tr').count()) > 0);
    check(true, 'the loaded queue `orders` lists its groups');

    // ---- Dead letters: list, requeue, purge ----
    await view(page, 'dead', '#dead-queue option[value="poison"]');
    await page.selectOption('#dead-queue', 'poison');
    const truthDead = cliJson(['dlq', 'list', 'poison']);
    await until('3 dead letters shown', WAIT_MS_MAX, async () =>
      (await page.locator('#dead tbody tr').count()) === 3);
    const offsets = truthDead.map((d) => d.offset);
    check(offsets.length === 3, `ListDeadLetters has 3 dead letters (offsets ${offsets.join(', ')})`);
    for (const d of truthDead) {
      const row = `#dead tr[data-offset="${d.offset}"]`;
      check((await text(page, `${row} [data-field="reason"]`)) === d.reason,
        `dead letter ${d.offset}: reason "${d.reason}"`);
      check(Number(await text(page, `${row} [data-field="attempts"]`)) === d.attempts,
        `dead letter ${d.offset}: ${d.attempts} attempts`);
      const history = await page.locator(`${row} .history li`).count();
      check(history >= 1, `dead letter ${d.offset}: its attempt history (${history} entries) shown`);
    }
    await page.click(`#dead tr[data-offset="${offsets[0]}"] button[data-action="requeue"]`);
    await until('the requeued one gone from the list', WAIT_MS_MAX, async () =>
      (await page.locator('#dead tbody tr').count()) === 2);
    let poison = cliJson(['queue', 'get', 'poison']).stats;
    check(poison.dead === 2 && poison.ready === 1,
      `requeue through the page: GetQueue says dead ${poison.dead}, ready ${poison.ready}`);
    await page.click(`#dead tr[data-offset="${offsets[1]}"] button[data-action="purge"]`);
    await until('the purged one gone from the list', WAIT_MS_MAX, async () =>
      (await page.locator('#dead tbody tr').count()) === 1);
    poison = cliJson(['queue', 'get', 'poison']).stats;
    check(poison.dead === 1, `purge through the page: GetQueue says dead ${poison.dead}`);
    await shot(page, 'dead-letters');

    // ---- Queues: depths against GetQueue, rates from the load ----
    await view(page, 'queues', '#queues tr[data-queue="audit"]');
    const fields = ['ready', 'delayed', 'leased', 'dead', 'groups'];
    for (const name of ['audit', 'poison']) {
      await nextPoll(page);
      const truth = cliJson(['queue', 'get', name]).stats;
      const shown = await rowNumbers(page, `#queues tr[data-queue="${name}"]`, fields);
      for (const f of fields) check(shown[f] === truth[f], `queue ${name}: ${f} ${shown[f]} as GetQueue says`);
    }
    const ageShown = Number(await page.locator('#queues tr[data-queue="audit"] [data-field="oldest_ready_age_ms"]').getAttribute('data-ms'));
    const ageTruth = cliJson(['queue', 'get', 'audit']).stats.oldest_ready_age_ms;
    check(ageShown > 0 && ageShown <= ageTruth && ageTruth - ageShown < 10000,
      `queue audit: oldest ready age ${ageShown} ms shown, ${ageTruth} ms by GetQueue just after`);
    const rate = (key) => page.locator(`.chart[data-queue="orders"][data-rate="${key}"] [data-field="rate"]`).first();
    await until('enqueue and ack rates of the loaded queue above 0', WAIT_MS_MAX, async () =>
      Number(await rate('enqueued').textContent()) > 0 && Number(await rate('acked').textContent()) > 0);
    check(true, `orders: enqueue ${await rate('enqueued').textContent()}/s, ack ${await rate('acked').textContent()}/s shown`);
    const points = await page.locator('.chart[data-queue="orders"][data-rate="enqueued"] polyline').getAttribute('points');
    check(points.split(' ').length >= 2, `the enqueue chart has ${points.split(' ').length} points`);
    await shot(page, 'queues');

    // ---- Failover: kill the leader, the page follows the new one ----
    await view(page, 'cluster', '#members tr');
    const old = Number(status(F).leader);
    if (old === F) throw new Error('FAIL: the page\'s own node became leader; rerun');
    process.kill(NODE_PIDS.get(old), 'SIGKILL');
    console.log(`killed node ${old} (the leader) with SIGKILL`);
    const shownLeader = await until('the page showing a new leader', FAILOVER_MS_MAX, async () => {
      const l = await page.locator('#cluster-leader').getAttribute('data-leader');
      return l !== 'none' && l !== String(old) && Number(l) > 0 ? l : null;
    });
    const now = status(F);
    check(now.leader === shownLeader && now.term > started.term,
      `after the kill the page shows leader ${shownLeader}, Cluster.Status says ${now.leader} in term ${now.term}`);
    await until('the page\'s polls working again', WAIT_MS_MAX, async () =>
      (await page.locator('#poll-state').getAttribute('class')) === 'ok');
    await view(page, 'queues', '#queues tr[data-queue="audit"]');
    await nextPoll(page);
    const truth = cliJson(['queue', 'get', 'audit'], `${NET}.${F}:7100`).stats;
    check(Number(await text(page, '#queues tr[data-queue="audit"] [data-field="ready"]')) === truth.ready,
      'after the failover the queues view still agrees with GetQueue');
    await view(page, 'cluster', '#members tr');
    await shot(page, 'cluster-after-failover');
    check(errors.length === 0, 'no script error on the page' + (errors.length ? ': ' + errors.join('; ') : ''));
  } finally {
    await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

const timer = setTimeout(() => {
  console.error(`FAIL: the browser test did not finish within ${TEST_TIMEOUT_S} s`);
  process.exit(1);
}, TEST_TIMEOUT_S * 1000);

main().then(() => {
  clearTimeout(timer);
  console.log(`ui: ${passed} passed, 0 failed`);
}, (e) => {
  clearTimeout(timer);
  console.error(e.message.startsWith('FAIL') ? e.message : 'FAIL: ' + (e.stack || e));
  console.log(`ui: ${passed} passed, 1 failed`);
  process.exit(1);
});
