// Drives the explorer's Witnesses panel and the in-browser check of witness
// cosignatures in headless Chromium; run by tests/explorer.rs, which starts a
// broker whose C2SP tlog-policy names two real witnesses (`sealmq witness
// serve`) with a quorum of both, and a second broker with no policy.
//
//   node tests/browser/witnesses.mjs BASE_URL PLAIN_BASE_URL EXPECT_JSON
//
// EXPECT_JSON: {witnesses: [{name, key_name, url}], quorum_lines,
// witnessed_size, record_index, plain_record_index}. Protocol on
// stdout/stdin as explorer.mjs's: "ok <what>" per check; "READY …" when the
// page waits, answered by "WITNESSED <size>" once the test logged a record
// and the witnesses' quorum cosigned a checkpoint of that size; "PASS" and
// exit 0, or "FAIL: <why>" and exit 1.

import { check, closeInput, nextLine, ok } from './protocol.mjs';
import { chromium } from 'playwright-core';

const [base, plainBase, expectJson] = process.argv.slice(2);
if (!base || !plainBase || !expectJson) {
  console.error('usage: witnesses.mjs BASE_URL PLAIN_BASE_URL EXPECT_JSON');
  process.exit(2);
}
const expected = JSON.parse(expectJson);
const names = expected.witnesses.map((w) => w.name);

const WAIT_MS = 15_000;

/** A number as the page shows it (en-US grouping), or NaN. */
const shown = (text) => Number(String(text).replace(/,/g, ''));

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

const pageErrors = [];
const consoleErrors = [];
const foreignRequests = [];
/** Console errors a page may log: Chromium reports every 404 it fetched as one. */
const allowed404 = [];

/** A fresh page on `origin`, its errors recorded; `may404` is a path it may get a 404 for. */
async function openPage(context, url, may404) {
  const origin = new URL(url).origin;
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on('pageerror', (e) => pageErrors.push(e.stack || String(e)));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    if (may404 && msg.location().url === `${origin}${may404}`) allowed404.push(msg.text());
    else consoleErrors.push(`${msg.text()} (${JSON.stringify(msg.location())})`);
  });
  page.on('request', (request) => {
    if (!request.url().startsWith(`${origin}/`) && !request.url().startsWith('data:')) foreignRequests.push(request.url());
  });
  const response = await page.goto(url, { waitUntil: 'load' });
  // The page runs under a strict Content-Security-Policy (its own scripts
  // only): a violation would show as a console error.
  const csp = response.headers()['content-security-policy'] || '';
  check(/script-src 'self'(;|$)/.test(csp) && !csp.includes('unsafe'), `the page's Content-Security-Policy: ${csp}`);
  await page.waitForFunction(() => document.body.dataset.ready === 'true');
  return page;
}

/** The panel's witness rows: [{name, cosigned, status, failing}]. */
const witnessRows = (page) => page.locator('#witness-table tbody tr[data-witness]').evaluateAll((rows) => rows.map((r) => ({
  name: r.dataset.witness,
  cosigned: r.querySelector('[data-field="cosigned-size"]').textContent,
  status: r.querySelector('[data-field="status"]').textContent,
  failing: r.querySelector('[data-field="status"]').classList.contains('bad'),
})));

/** Waits until the panel shows every witness having cosigned at least `size`. */
async function waitCosigned(page, size) {
  await page.waitForFunction(({ names, size }) => {
    const rows = [...document.querySelectorAll('#witness-table tbody tr[data-witness]')];
    const cosigned = (r) => Number(r.querySelector('[data-field="cosigned-size"]').textContent.replace(/,/g, ''));
    return names.every((n) => rows.some((r) => r.dataset.witness === n && cosigned(r) >= size));
  }, { names, size });
}

async function verify(page) {
  await page.click('#verify-button');
  await page.waitForFunction(() => ['ok', 'failed'].includes(document.getElementById('verify-result').dataset.status));
  const steps = await page.locator('#verify-steps li').evaluateAll((items) =>
    Object.fromEntries(items.map((li) => [li.dataset.step, { status: li.dataset.status, detail: li.querySelector('.detail').textContent }])));
  const box = page.locator('#verify-result');
  return {
    status: await box.getAttribute('data-status'),
    failedStep: await box.getAttribute('data-failed-step'),
    witnessed: await box.getAttribute('data-witnessed'),
    verdict: await page.textContent('#verify-verdict'),
    steps,
  };
}

async function openRecord(page, index) {
  await page.fill('#goto-index', String(index));
  await page.press('#goto-index', 'Enter');
  await page.waitForFunction((t) => document.getElementById('record-title')?.textContent === t, `Record #${index.toLocaleString('en-US')}`);
}

/** Verify with the proof bundle's checkpoint note rewritten by `rewrite`. */
async function verifyTampered(page, rewrite) {
  let seen = 0;
  const handler = async (route) => {
    const response = await route.fetch();
    const body = await response.json();
    body.checkpoint = rewrite(body.checkpoint);
    seen++;
    await route.fulfill({ response, json: body });
  };
  await page.route('**/v1/proof/*', handler);
  try {
    return await verify(page);
  } finally {
    await page.unroute('**/v1/proof/*', handler);
    check(seen > 0, 'the tampered proof was never fetched');
  }
}

/** The note with the signature line of key `keyName` passed through `change` (null drops it). */
function withLine(note, keyName, change) {
  const lines = note.split('\n');
  const at = lines.findIndex((l) => l.startsWith(`\u2014 ${keyName} `));
  check(at > 0, `the checkpoint carries no cosignature line of ${keyName}: ${JSON.stringify(note)}`);
  const changed = change(lines[at]);
  if (changed === null) lines.splice(at, 1);
  else lines[at] = changed;
  return lines.join('\n');
}

let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });

  // ---- The panel, on the broker with two witnesses ---------------------------
  const page = await openPage(context, base, null);
  await waitCosigned(page, expected.witnessed_size);
  const rows = await witnessRows(page);
  check(rows.map((r) => r.name).join(',') === names.join(','), `witness rows ${JSON.stringify(rows)}, policy ${names}`);
  for (const r of rows) {
    check(!r.failing && r.status.startsWith('200'), `witness ${r.name}'s last status: ${r.status}`);
  }
  const urls = await page.locator('#witness-table tbody tr[data-witness] td:nth-child(3)').allTextContents();
  check(urls.join(',') === expected.witnesses.map((w) => w.url).join(','), `witness URLs shown: ${urls}`);
  ok(`the panel lists witnesses ${names.join(' and ')}, each having cosigned at least ${expected.witnessed_size} (${rows.map((r) => `${r.name}: ${r.cosigned}`).join(', ')})`);

  check(await page.isVisible('#witnessed-stat'), 'the Witnessed stat is shown');
  const stat = shown(await page.textContent('#witnessed-size'));
  const inPanel = shown(await page.textContent('#witness-witnessed-size'));
  check(stat >= expected.witnessed_size && inPanel === stat, `witnessed size: stat ${stat}, panel ${inPanel}, expected ≥ ${expected.witnessed_size}`);
  const quorum = await page.textContent('#witness-quorum');
  for (const line of expected.quorum_lines) check(quorum.includes(line), `the quorum shown (${quorum}) has "${line}"`);
  ok(`witnessed size ${expected.witnessed_size} or more shown, with the quorum rule (${stat})`);

  const recent = await page.locator('#witness-recent tbody tr[data-size]').evaluateAll((trs) =>
    trs.map((tr) => ({ size: Number(tr.dataset.size), quorum: tr.dataset.quorum, by: tr.children[2].textContent })));
  const met = recent.filter((r) => r.quorum === 'true' && names.every((n) => r.by.split(', ').includes(n)));
  check(met.some((r) => r.size === stat), `recent checkpoints ${JSON.stringify(recent)}: none of size ${stat} met the quorum`);
  ok(`recent checkpoints show the quorum met, cosigned by ${names.join(' and ')}`);

  // A record logged now: the panel follows without a reload.
  await page.evaluate(() => {
    window.__notReloaded = true;
  });
  console.log('READY witnessed');
  const answer = /^WITNESSED (\d+)$/.exec(await nextLine(60_000));
  check(answer, 'unexpected answer on stdin');
  const late = Number(answer[1]);
  await waitCosigned(page, late);
  await page.waitForFunction((size) => Number(document.getElementById('witnessed-size').textContent.replace(/,/g, '')) >= size, late);
  check(await page.evaluate(() => window.__notReloaded === true), 'the page was not reloaded');
  ok(`without a reload, the panel shows the witnessed size reaching ${late}`);

  // ---- Verify: cosignatures checked here, against the quorum rule --------------
  const proofUrls = [];
  page.on('request', (r) => {
    if (r.url().includes('/v1/proof/')) proofUrls.push(r.url());
  });
  await openRecord(page, expected.record_index);
  let r = await verify(page);
  check(r.status === 'ok', `Verify failed: ${r.verdict} ${JSON.stringify(r.steps)}`);
  check(proofUrls.at(-1).endsWith('?witnessed=true'), `the proof was not asked against the witnessed checkpoint: ${proofUrls.at(-1)}`);
  const w = r.steps.witnesses;
  check(w.status === 'ok' && r.witnessed === 'true', `witnesses step ${JSON.stringify(w)}, data-witnessed ${r.witnessed}`);
  check(w.detail.includes(`cosigned by ${names.join(', ')}`) && w.detail.includes('quorum met'), `witnesses step: ${w.detail}`);
  check(r.verdict.includes('cosigned by a quorum of its witnesses'), `verdict: ${r.verdict}`);
  ok(`Verify on record ${expected.record_index}: the checkpoint is cosigned by the quorum, checked here (${w.detail})`);

  // One witness's cosignature altered: its Ed25519 signature no longer holds.
  const [first, second] = expected.witnesses;
  r = await verifyTampered(page, (note) => withLine(note, first.key_name, (line) => {
    const sig = Buffer.from(line.split(' ')[2], 'base64');
    sig[sig.length - 1] ^= 0x01; // in the Ed25519 signature
    return `\u2014 ${first.key_name} ${sig.toString('base64')}`;
  }));
  check(r.status === 'failed' && r.failedStep === 'witnesses', `altered cosignature: ${r.status} at ${r.failedStep}: ${r.verdict}`);
  ok(`one witness's cosignature altered → failed at "witnesses": ${r.steps.witnesses.detail}`);

  // One removed: every remaining signature holds, but 1 of 2 is no quorum —
  // judged here from the rule, whatever the broker says of that size.
  r = await verifyTampered(page, (note) => withLine(note, second.key_name, () => null));
  check(r.status === 'ok' && r.steps.witnesses.status === 'unwitnessed' && r.witnessed === 'false',
    `removed cosignature: ${r.status}, witnesses ${JSON.stringify(r.steps.witnesses)}, data-witnessed ${r.witnessed}`);
  check(r.verdict.includes('not witnessed'), `verdict: ${r.verdict}`);
  ok(`one witness's cosignature removed → verified, not witnessed: ${r.steps.witnesses.detail}`);

  r = await verify(page);
  check(r.status === 'ok' && r.witnessed === 'true', `genuine again: ${r.verdict}`);
  await page.close();

  // ---- A broker without witnesses ------------------------------------------------
  const asked = [];
  const plain = await openPage(context, plainBase, '/v1/witnesses');
  plain.on('request', (req) => {
    if (new URL(req.url()).pathname === '/v1/witnesses') asked.push(req.url());
  });
  const none = await plain.textContent('#no-witnesses');
  check(/no witnesses configured/i.test(none), `the panel says: ${none}`);
  check(await plain.isHidden('#witnessed-stat'), 'no Witnessed stat without witnesses');
  ok('a broker without witnesses says so: "No witnesses configured"');

  await openRecord(plain, expected.plain_record_index);
  r = await verify(plain);
  check(r.status === 'ok' && r.steps.witnesses.status === 'skipped' && r.witnessed === null,
    `no witnesses: ${r.status}, ${JSON.stringify(r.steps.witnesses)}, data-witnessed ${r.witnessed}`);
  check(r.steps.witnesses.detail.includes('no witnesses configured'), r.steps.witnesses.detail);
  ok(`Verify on record ${expected.plain_record_index} of the broker without witnesses: ok, witnesses skipped`);

  // The page polls every 2 s; after a 404 it must not ask again.
  await plain.waitForTimeout(4_500);
  check(asked.length === 0, `/v1/witnesses asked again after its 404: ${asked.length} times`);
  check(allowed404.length <= 1, `more than one 404 logged for /v1/witnesses: ${allowed404.join('; ')}`);
  ok('/v1/witnesses asked once, not again after its 404');
  await plain.close();

  check(pageErrors.length === 0, `uncaught page errors:\n${pageErrors.join('\n')}`);
  check(consoleErrors.length === 0, `console errors:\n${consoleErrors.join('\n')}`);
  check(foreignRequests.length === 0, `requests outside the broker:\n${foreignRequests.join('\n')}`);
  ok('no page errors, no console errors, nothing fetched from elsewhere');
  console.log('PASS');
} catch (e) {
  console.log(`FAIL: ${e.message}`);
  if (pageErrors.length) console.log(`page errors:\n${pageErrors.join('\n')}`);
  if (consoleErrors.length) console.log(`console errors:\n${consoleErrors.join('\n')}`);
  exitCode = 1;
} finally {
  await browser.close();
  closeInput();
}
process.exit(exitCode);
