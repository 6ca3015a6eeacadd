// Drives the broker's log explorer in headless Chromium; run by
// tests/explorer.rs, which starts the broker and publishes what is checked.
//
//   node tests/browser/explorer.mjs BASE_URL SCREENSHOT.png EXPECT_JSON [VECTORS_DIR]
//
// EXPECT_JSON says what the log holds (device ids, record indices, payloads).
// Protocol with the Rust test, on stdout/stdin:
//   - "ok <what>" for each check that held;
//   - "READY …" when the page waits for a new block: the test then publishes
//     a record and answers "SEALED <index>" on stdin once it is sealed, and
//     the page must show that block without a reload. Twice: once with the
//     live stream (SSE), once with the stream refused (polling);
//   - "PASS" at the end and exit 0, or "FAIL: <why>" and exit 1.

import { readFileSync } from 'node:fs';
import { check, closeInput, nextLine, ok } from './protocol.mjs';
import { chromium } from 'playwright-core';

const [base, screenshotPath, expectJson, vectorsDir] = process.argv.slice(2);
if (!base || !screenshotPath || !expectJson) {
  console.error('usage: explorer.mjs BASE_URL SCREENSHOT.png EXPECT_JSON [VECTORS_DIR]');
  process.exit(2);
}
const expected = JSON.parse(expectJson);
const origin = new URL(base).origin;

const WAIT_MS = 15_000;

function flipByteBase64(text, at) {
  const bytes = Buffer.from(text, 'base64');
  bytes[at % bytes.length] ^= 0x01;
  return bytes.toString('base64');
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

// Everything the page does that a user would never see but that is a bug.
const pageErrors = [];
const consoleErrors = [];
const foreignRequests = [];

let exitCode = 0;
try {
  // A new context is a fresh profile: no pinned key, no cache.
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on('pageerror', (e) => pageErrors.push(e.stack || String(e)));
  page.on('console', (msg) => {
    // A broker without witnesses answers /v1/witnesses with 404, which the
    // page asks once; Chromium reports every 404 as a console error.
    const noWitnesses = msg.location().url.endsWith('/v1/witnesses');
    if (msg.type() === 'error' && !noWitnesses) consoleErrors.push(`${msg.text()} (${JSON.stringify(msg.location())})`);
  });
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(`${origin}/`) && !url.startsWith('data:')) foreignRequests.push(url);
  });

  await page.goto(base, { waitUntil: 'load' });
  check((await page.title()).includes('sealmq'), 'the page has its title');

  // ---- The verification functions against the spec's vectors ---------------
  if (vectorsDir) {
    const vectors = {};
    for (const name of ['rfc6962', 'records', 'checkpoint', 'mqs1', 'rules']) {
      vectors[name] = JSON.parse(readFileSync(`${vectorsDir}/${name}.json`, 'utf8'));
    }
    const failures = await page.evaluate(runVectors, vectors);
    check(failures.length === 0, `vector checks failed:\n  ${failures.join('\n  ')}`);
    ok('verification functions reproduce the spec vectors and reject their corruptions');
  }

  // ---- Checkpoint and verifier key -----------------------------------------
  await page.waitForFunction(() => document.body.dataset.ready === 'true');
  const vkeyShown = (await page.locator('#vkey').textContent()).trim();
  check(vkeyShown === expected.vkey, `the page shows vkey ${vkeyShown}, the broker's banner ${expected.vkey}`);
  ok('verifier key shown');
  const note = await page.locator('#checkpoint-note').textContent();
  const noteLines = note.split('\n');
  check(noteLines[0] === expected.vkey.split('+')[0], `the note's origin is the key's: ${JSON.stringify(note)}`);
  check(/^\d+$/.test(noteLines[1]) && Number(noteLines[1]) >= expected.sealed_size, `the note's size ${noteLines[1]} covers ${expected.sealed_size} records`);
  check(noteLines[4].startsWith('\u2014 '), 'the note carries a signature line');
  ok(`checkpoint shown (tree size ${noteLines[1]})`);

  // ---- Blocks, and one sealed while the page is open -----------------------
  const heights = await page.locator('#blocks tr[data-height]').evaluateAll((rows) => rows.map((r) => Number(r.dataset.height)));
  check(heights.length >= 1, 'blocks are listed');
  check(heights.every((h, i) => i === 0 || h < heights[i - 1]), `blocks newest first: ${heights}`);
  const sizes = await page.locator('#blocks tr[data-height]').evaluateAll((rows) => rows.map((r) => Number(r.dataset.treeSize)));
  check(sizes[0] >= expected.sealed_size, `the newest block's tree size ${sizes[0]} covers ${expected.sealed_size}`);
  ok(`${heights.length} blocks shown, newest at height ${heights[0]}`);

  await page.evaluate(() => {
    window.__notReloaded = true;
  });
  await page.waitForFunction(() => document.getElementById('live-status').dataset.mode === 'live');
  ok('live block stream connected');
  console.log(`READY ${heights[0]}`);
  const answer = await nextLine(60_000);
  const sealed = /^SEALED (\d+)$/.exec(answer);
  check(sealed, `unexpected answer on stdin: ${answer}`);
  const newIndex = Number(sealed[1]);
  await page.waitForFunction(
    (index) => [...document.querySelectorAll('#blocks tr[data-height]')].some((r) => Number(r.dataset.treeSize) > index),
    newIndex,
  );
  check(await page.evaluate(() => window.__notReloaded === true), 'the page was not reloaded');
  await page.waitForFunction(
    (index) => Number(document.getElementById('checkpoint-note').textContent.split('\n')[1]) > index,
    newIndex,
  );
  ok(`the block sealing record ${newIndex} appeared live, with its checkpoint`);

  // ---- Polling when the live stream is refused --------------------------------
  const pollPage = await context.newPage();
  pollPage.setDefaultTimeout(WAIT_MS);
  pollPage.on('pageerror', (e) => pageErrors.push(e.stack || String(e)));
  pollPage.on('console', (msg) => {
    // Chromium reports the refused stream itself; that one is expected here.
    const refused = msg.text().includes('blocks/live') || msg.location().url.includes('/v1/blocks/live')
      || msg.location().url.endsWith('/v1/witnesses');
    if (msg.type() === 'error' && !refused) consoleErrors.push(`${msg.text()} (${JSON.stringify(msg.location())})`);
  });
  await pollPage.route('**/v1/blocks/live', (route) =>
    route.fulfill({ status: 503, contentType: 'application/json', body: '{"error":"refused by the test"}' }),
  );
  await pollPage.goto(base, { waitUntil: 'load' });
  await pollPage.waitForFunction(() => document.getElementById('live-status').dataset.mode === 'polling');
  console.log(`READY polling`);
  const pollAnswer = /^SEALED (\d+)$/.exec(await nextLine(60_000));
  check(pollAnswer, 'unexpected answer on stdin');
  const pollIndex = Number(pollAnswer[1]);
  await pollPage.waitForFunction(
    (index) => [...document.querySelectorAll('#blocks tr[data-height]')].some((r) => Number(r.dataset.treeSize) > index),
    pollIndex,
  );
  ok(`with the live stream refused, the page polled and showed the block sealing record ${pollIndex}`);
  await pollPage.close();

  // ---- Search ----------------------------------------------------------------
  async function searchFor({ device = '', topic = '', kind = '' }) {
    await page.fill('#search-device', device);
    await page.fill('#search-topic', topic);
    await page.selectOption('#search-kind', { value: kind });
    const response = page.waitForResponse((r) => r.url().includes('/v1/records?'));
    await page.click('#search-button');
    await response;
    await page.waitForFunction(() => !document.getElementById('records').hasAttribute('aria-busy'));
  }
  const shownIndices = () => page.locator('#records tr[data-index]').evaluateAll((rows) => rows.map((r) => Number(r.dataset.index)));
  const descending = (list) => [...list].sort((a, b) => b - a);
  const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

  await searchFor({ device: expected.device, kind: 'publish' });
  let got = await shownIndices();
  check(same(got, descending(expected.device_indices)), `device search: got ${got}, expected ${descending(expected.device_indices)}`);
  ok(`search by device ${expected.device} finds exactly its ${got.length} publishes`);

  await searchFor({ topic: expected.topic_filter });
  got = await shownIndices();
  check(same(got, descending(expected.topic_indices)), `topic filter search: got ${got}, expected ${descending(expected.topic_indices)}`);
  ok(`search by topic filter ${expected.topic_filter} finds exactly ${got.length} records`);

  // Paging: the legacy device published more than one page.
  await searchFor({ device: expected.legacy, kind: 'publish' });
  const firstPage = await shownIndices();
  check(await page.isEnabled('#records-next'), 'Next is enabled on a full first page');
  const nextResponse = page.waitForResponse((r) => r.url().includes('/v1/records?') && r.url().includes('cursor='));
  await page.click('#records-next');
  await nextResponse;
  await page.waitForFunction(() => !document.getElementById('records').hasAttribute('aria-busy'));
  const secondPage = await shownIndices();
  const paged = [...firstPage, ...secondPage];
  check(same(paged, descending(expected.legacy_indices)), `paging: got ${firstPage} then ${secondPage}, expected ${descending(expected.legacy_indices)}`);
  check(await page.isDisabled('#records-next'), 'Next is disabled on the last page');
  ok(`paging through ${expected.legacy}'s ${paged.length} records (${firstPage.length} + ${secondPage.length})`);

  // ---- One record ------------------------------------------------------------
  const title = (index) => `Record #${index.toLocaleString('en-US')}`;
  async function openRecord(index) {
    await page.fill('#goto-index', String(index));
    await page.press('#goto-index', 'Enter');
    await page.waitForFunction((t) => document.getElementById('record-title')?.textContent === t, title(index));
  }

  // Opened from the search results, as a user would.
  const textRecord = expected.text_record;
  await searchFor({ device: expected.device, kind: 'publish' });
  await page.click(`#records tr[data-index="${textRecord.index}"]`);
  await page.waitForSelector('#record-payload');
  check((await page.textContent('#record-title')) === title(textRecord.index), 'the clicked record opened');
  check((await page.getAttribute('#record-payload', 'data-encoding')) === 'utf8', 'a UTF-8 payload is shown as text');
  check((await page.textContent('#record-payload')) === textRecord.payload, `payload shown: ${await page.textContent('#record-payload')}`);
  check((await page.textContent('#record-topic')) === textRecord.topic, 'topic shown');
  check((await page.textContent('#mqs1-kid')) === expected.kid, 'the MQS1 key id shown is the device key\'s');
  ok(`record ${textRecord.index} shows its topic, UTF-8 payload and MQS1 fields`);

  const binaryRecord = expected.binary_record;
  await openRecord(binaryRecord.index);
  check((await page.getAttribute('#record-payload', 'data-encoding')) === 'hex', 'a non-UTF-8 payload is shown as hex');
  const dump = (await page.textContent('#record-payload')).split('\n').map((l) => l.slice(10, 57).replace(/ /g, '')).join('');
  check(dump === binaryRecord.hex, `hex shown ${dump}, payload ${binaryRecord.hex}`);
  ok(`record ${binaryRecord.index} shows its binary payload as hex`);

  // ---- Verify --------------------------------------------------------------
  async function verify() {
    await page.click('#verify-button');
    await page.waitForFunction(() => ['ok', 'failed'].includes(document.getElementById('verify-result').dataset.status));
    const box = page.locator('#verify-result');
    const steps = await page.locator('#verify-steps li').evaluateAll((items) =>
      Object.fromEntries(items.map((li) => [li.dataset.step, li.dataset.status])),
    );
    return {
      status: await box.getAttribute('data-status'),
      failedStep: await box.getAttribute('data-failed-step'),
      verdict: await page.textContent('#verify-verdict'),
      failedDetail: await page.locator('#verify-steps li[data-status="failed"] .detail').allTextContents(),
      steps,
    };
  }
  async function expectOk(what) {
    const r = await verify();
    check(r.status === 'ok', `${what}: verification failed: ${r.verdict}`);
    for (const step of ['bundle', 'record', 'vkey', 'checkpoint', 'tree-size', 'inclusion']) {
      check(r.steps[step] === 'ok', `${what}: step ${step} is ${r.steps[step]}`);
    }
    return r;
  }
  async function expectFailure(step, what) {
    const r = await verify();
    check(r.status === 'failed', `${what}: verification passed, expected a failure at ${step}`);
    check(r.failedStep === step, `${what}: failed at ${r.failedStep} (${r.verdict}), expected ${step}`);
    check(r.verdict.includes('failed'), `${what}: the verdict says so: ${r.verdict}`);
    check(r.failedDetail.length === 1, `${what}: one step is marked failed: ${r.failedDetail}`);
    ok(`${what} → failed at "${step}": ${r.failedDetail[0]}`);
  }

  await openRecord(textRecord.index);
  let result = await expectOk('signed record');
  check(result.steps.signature === 'ok' && result.steps.payload === 'ok', `signed record: signature ${result.steps.signature}, payload ${result.steps.payload}`);
  ok(`Verify on signed record ${textRecord.index}: checkpoint, inclusion, payload and MQS1 signature hold`);
  await page.screenshot({ path: screenshotPath, fullPage: true });
  ok(`screenshot saved to ${screenshotPath}`);

  await openRecord(expected.unsigned_index);
  result = await expectOk('unsigned record');
  check(result.steps.signature === 'skipped', `unsigned record: the signature step is ${result.steps.signature}`);
  ok(`Verify on unsigned record ${expected.unsigned_index}: ok, with no device signature to check`);

  await openRecord(expected.registry_index);
  result = await expectOk('registry record');
  ok(`Verify on registry record ${expected.registry_index}: ok`);

  // ---- Rules -----------------------------------------------------------------
  const rule = expected.rule;
  const ruleRow = page.locator(`#rules tr[data-rule="${rule.name}"]`);
  await ruleRow.waitFor();
  const field = (name) => ruleRow.locator(`[data-field="${name}"]`);
  check((await field('name').textContent()) === rule.name, 'the rule\'s name');
  check((await field('on').textContent()) === rule.on, `the rule's filter: ${await field('on').textContent()}`);
  check((await field('hash').locator('.hash').getAttribute('title')) === rule.rule_hash, 'the rule\'s hash, whole in its title');
  check((await field('install').textContent()) === `#${rule.install_index}`, 'the install record\'s index');
  const panelDocument = page.locator(`#rules tr[data-rule-document="${rule.name}"] pre`);
  await page.click(`#rules tr[data-rule-document="${rule.name}"] summary`);
  check((await panelDocument.textContent()) === rule.document, 'the rule document, byte for byte');
  check((await page.textContent('#rules-cel')).includes('cel '), 'the CEL version rules run with');
  ok(`the Rules panel shows ${rule.name}: filter, hash, install record #${rule.install_index} and its document`);

  // Its install link opens the kind-3 record.
  await field('install').locator('a').click();
  await page.waitForFunction((t) => document.getElementById('record-title')?.textContent === t, title(rule.install_index));
  check((await page.textContent('#record-document')) === rule.document, 'the install record shows the document');
  check((await page.textContent('#record-rule-hash')) === rule.rule_hash, 'the install record shows the rule hash');
  ok(`the install record #${rule.install_index} shows the rule document`);
  result = await expectOk('rule install record');

  // The trigger links its action; the action its trigger and its rule.
  await openRecord(rule.trigger_index);
  const actionLinks = await page.locator('#record-actions a[data-action]').evaluateAll((links) => links.map((a) => Number(a.dataset.action)));
  check(same(actionLinks, [rule.action_index]), `the trigger's actions: ${actionLinks}`);
  ok(`trigger #${rule.trigger_index} links its action #${rule.action_index}`);
  await page.click(`#record-actions a[data-action="${rule.action_index}"]`);
  await page.waitForFunction((t) => document.getElementById('record-title')?.textContent === t, title(rule.action_index));
  check((await page.getAttribute('#record-trigger', 'href')) === `#/records/${rule.trigger_index}`, 'the action links its trigger');
  check((await page.textContent('#record-rule-name')) === rule.name, 'the action names its rule');
  await page.waitForSelector('#record-rule-document');
  check((await page.textContent('#record-rule-document')) === rule.document, 'the action shows the document of the rule that ran');
  check((await page.getAttribute('#record-rule-install', 'href')) === `#/records/${rule.install_index}`, 'the action links the rule\'s install');
  ok(`action #${rule.action_index} links its trigger #${rule.trigger_index} and its rule, with the document installed at #${rule.install_index}`);

  result = await expectOk('rule action');
  check(result.steps.rule === 'ok', `rule action: the rule step is ${result.steps.rule}`);
  check(result.steps.signature === 'skipped', `rule action: the signature step is ${result.steps.signature}`);
  check((await page.textContent('#verify-rule-document')) === rule.document, 'Verify shows the rule document it checked');
  ok(`Verify on action #${rule.action_index}: inclusion, and the rule's install checked here`);
  await page.screenshot({ path: screenshotPath.replace(/\.png$/, '-rule.png'), fullPage: true });

  // The install record another document, or its proof broken: the rule step says so.
  const installProof = (url) => new URL(url).pathname === `/v1/proof/${rule.install_index}`;
  await tampered(installProof, (b) => {
    const bytes = Buffer.from(b.record, 'base64');
    bytes[bytes.length - 2] ^= 0x01; // inside the document
    b.record = bytes.toString('base64');
  }, 'rule', 'one byte of the rule document the action names flipped');
  await tampered(installProof, (b) => {
    b.inclusion[0] = flipByteBase64(b.inclusion[0], 3);
  }, 'rule', 'the rule install\'s inclusion proof broken');
  await openRecord(textRecord.index);

  // ---- Verify must fail on tampered answers ----------------------------------
  // Each case rewrites one thing the broker sends; the page must name the step.
  async function tampered(pattern, rewrite, step, what) {
    let seen = 0;
    const handler = async (route) => {
      const response = await route.fetch();
      const body = await response.json();
      rewrite(body);
      seen++;
      await route.fulfill({ response, json: body });
    };
    await page.route(pattern, handler);
    try {
      await expectFailure(step, what);
    } finally {
      await page.unroute(pattern, handler);
    }
    check(seen > 0, `${what}: the tampered request was never made`);
  }

  await openRecord(textRecord.index);
  await tampered('**/v1/proof/*', (b) => {
    check(b.inclusion.length > 0, `record ${textRecord.index} has an empty inclusion proof; the test needs a bigger tree`);
    b.inclusion[0] = flipByteBase64(b.inclusion[0], 7);
  }, 'inclusion', 'one byte of an inclusion hash flipped');
  await tampered('**/v1/proof/*', (b) => {
    // The last byte of the record is inside the MQS1 signature.
    b.record = flipByteBase64(b.record, Buffer.from(b.record, 'base64').length - 1);
  }, 'record', 'one byte of the proven record flipped');
  await tampered('**/v1/proof/*', (b) => {
    const lines = b.checkpoint.split('\n');
    lines[2] = flipByteBase64(lines[2], 0);
    b.checkpoint = lines.join('\n');
  }, 'checkpoint', 'the checkpoint\'s root changed');
  await tampered('**/v1/proof/*', (b) => {
    b.tree_size += 1;
  }, 'tree-size', 'the bundle\'s tree size changed');
  await tampered('**/v1/devices', (b) => {
    // Another valid key under the same kid: only the real key verifies.
    const device = b.devices.find((d) => d.id === expected.device);
    check(device, `the device ${expected.device} is in /v1/devices`);
    for (const key of device.keys) key.public_key = expected.other_public_key;
  }, 'signature', 'the device\'s key replaced');

  // The record as the page shows it (/v1/records/N, fetched when opened)
  // must be the record proven.
  async function tamperedView(rewrite, step, what) {
    const handler = async (route) => {
      const response = await route.fetch();
      const body = await response.json();
      rewrite(body);
      await route.fulfill({ response, json: body });
    };
    await page.route('**/v1/records/*', handler);
    try {
      await openRecord(textRecord.index);
    } finally {
      await page.unroute('**/v1/records/*', handler);
    }
    await expectFailure(step, what);
  }
  await tamperedView((b) => {
    b.topic = `${b.topic}/elsewhere`;
  }, 'record', 'the topic shown differs from the proven record\'s');
  await tamperedView((b) => {
    b.payload = flipByteBase64(b.payload, 0);
  }, 'payload', 'one byte of the stored payload flipped');
  await openRecord(textRecord.index);

  // A pinned key that is not the log's: the checkpoint cannot be opened.
  await page.click('details.pin summary');
  await page.fill('#pin-input', expected.other_vkey);
  await page.click('#pin-button');
  await page.waitForSelector('#vkey-mismatch');
  await openRecord(textRecord.index);
  await expectFailure('checkpoint', 'a pinned key that is not the log\'s');
  await page.click('details.pin summary');
  await page.click('#unpin-button');
  await page.waitForSelector('#vkey-mismatch', { state: 'detached' });

  // Untampered again: verification holds once more.
  await expectOk('signed record after the tampering cases');
  ok('Verify holds again once the answers are genuine');

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

// Runs in the page: the explorer's pure functions against the spec vectors.
// Returns the failures (empty when everything holds).
async function runVectors(vectors) {
  const V = window.sealmq.verify;
  const failures = [];
  const hex = V.hexDecode;
  const expectThrow = async (what, fn) => {
    try {
      await fn();
    } catch {
      return;
    }
    failures.push(`${what}: accepted`);
  };
  const expectEq = (what, got, want) => {
    if (got !== want) failures.push(`${what}: got ${got}, want ${want}`);
  };

  // RFC 6962 leaves, inclusion proofs, and their exact lengths.
  const t = vectors.rfc6962;
  for (let i = 0; i < t.leaf_data_hex.length; i++) {
    expectEq(`leaf ${i}`, V.hexEncode(await V.leafHash(hex(t.leaf_data_hex[i]))), t.leaf_hashes[i]);
  }
  for (const c of t.inclusion) {
    const leaf = hex(t.leaf_hashes[c.index]);
    const root = hex(t.roots[String(c.size)]);
    const path = c.path.map(hex);
    const what = `inclusion ${c.index}/${c.size}`;
    try {
      await V.verifyInclusion(c.index, c.size, leaf, path, root);
    } catch (e) {
      failures.push(`${what}: ${e.message}`);
    }
    await expectThrow(`${what} with an extra hash`, () => V.verifyInclusion(c.index, c.size, leaf, [...path, leaf], root));
    if (path.length > 0) {
      await expectThrow(`${what} without its last hash`, () => V.verifyInclusion(c.index, c.size, leaf, path.slice(0, -1), root));
      for (let p = 0; p < path.length; p++) {
        const bad = path.map((h) => h.slice());
        bad[p][0] ^= 1;
        await expectThrow(`${what} with hash ${p} flipped`, () => V.verifyInclusion(c.index, c.size, leaf, bad, root));
      }
    }
    await expectThrow(`${what} at another index`, () => V.verifyInclusion(c.index ^ 1, c.size, leaf, path, root));
    const biggerRoot = t.roots[String(c.size + 1)];
    if (biggerRoot) {
      await expectThrow(`${what} against the next tree`, () => V.verifyInclusion(c.index, c.size + 1, leaf, path, hex(biggerRoot)));
    }
  }

  // Records decode and hash to their leaves.
  for (const [i, r] of vectors.records.records.entries()) {
    const bytes = hex(r.record);
    expectEq(`record ${i} leaf`, V.hexEncode(await V.leafHash(bytes)), r.leaf_hash);
    const rec = V.decodeRecord(bytes);
    expectEq(`record ${i} kind`, rec.kind, 'publish');
    expectEq(`record ${i} payload hash`, V.hexEncode(rec.payloadSha256), V.hexEncode(await V.sha256(hex(r.payload_hex))));
    await expectThrow(`record ${i} truncated`, () => V.decodeRecord(bytes.slice(0, -1)));
    await expectThrow(`record ${i} with a trailing byte`, () => V.decodeRecord(new Uint8Array([...bytes, 0])));
  }
  const actions = vectors.records.registry_records.map((r) => V.decodeRecord(hex(r.record)).action);
  expectEq('registry actions', actions.join(','), 'key_added,key_revoked,policy_set');

  // Rules (spec/rules.md): kind 3 and a rule's action (auth 2).
  const rv = vectors.rules;
  const installed = V.decodeRecord(hex(rv.install_record));
  expectEq('rule install kind', `${installed.kind} ${installed.action} ${installed.ruleName}`, 'rule installed irrigate-bed');
  expectEq('rule document', new TextDecoder().decode(installed.document), rv.document);
  expectEq('rule_hash', V.hexEncode(await V.sha256(installed.document)), rv.rule_hash);
  const removed = V.decodeRecord(hex(rv.remove_record));
  expectEq('rule removal', `${removed.kind} ${removed.action} ${removed.ruleName} ${removed.document}`, 'rule removed irrigate-bed null');
  const trigger = V.decodeRecord(hex(rv.trigger_record));
  expectEq('trigger cause', String(trigger.cause), 'null');
  const act = V.decodeRecord(hex(rv.action_record));
  expectEq('action device', act.deviceId, '$rule/irrigate-bed');
  expectEq('action cause', `${act.cause.triggerIndex} ${V.hexEncode(act.cause.ruleHash)} ${act.cause.ruleName}`, `${rv.trigger_index} ${rv.rule_hash} irrigate-bed`);
  expectEq('action payload hash', V.hexEncode(act.payloadSha256), V.hexEncode(await V.sha256(V.utf8.encode(rv.action_payload))));
  expectEq('action leaf', V.hexEncode(await V.leafHash(hex(rv.action_record))), rv.action_leaf_hash);
  await expectThrow('action truncated', () => V.decodeRecord(hex(rv.action_record).slice(0, -1)));
  await expectThrow('install with a trailing byte', () => V.decodeRecord(new Uint8Array([...hex(rv.install_record), 0])));
  const renamed = hex(rv.action_record);
  renamed[renamed.indexOf(0x24)] = 0x25; // '$rule/…' → '%rule/…'
  await expectThrow('an action whose device id is not $rule/<name>', () => V.decodeRecord(renamed));

  // The checkpoint and its proof bundle (a record signed by the MQS1
  // vectors' device), then one corruption per field.
  const cp = vectors.checkpoint;
  const m = vectors.mqs1;
  const devices = [{ id: 'dev-0001', keys: [{ kid: m.kid, public_key: m.device_public_key }] }];
  const good = await V.verifyRecord({ bundle: cp.bundle, vkey: cp.vkey, index: cp.bundle.index, devices });
  if (good.steps.find((s) => s.id === 'signature').status !== 'ok') failures.push('checkpoint bundle: the record\'s MQS1 signature was not checked');
  if (!good.ok) failures.push(`checkpoint bundle: failed at ${good.failedStep}: ${JSON.stringify(good.steps)}`);
  const opened = await V.openCheckpoint(cp.signed_note, await V.parseVerifierKey(cp.vkey));
  expectEq('checkpoint size', String(opened.size), '3');
  const flip = (b64, at) => {
    const bytes = V.base64Decode(b64);
    bytes[at] ^= 1;
    return V.base64Encode(bytes);
  };
  const corruptions = [
    ['inclusion', (b) => { b.inclusion[0] = flip(b.inclusion[0], 31); }],
    ['inclusion', (b) => { b.record = flip(b.record, 50); }], // inside payload_sha256
    ['inclusion', (b) => { b.inclusion.push(b.inclusion[0]); }],
    ['tree-size', (b) => { b.tree_size = 4; }],
    ['bundle', (b) => { b.index = 1; }],
    ['checkpoint', (b) => { b.checkpoint = b.checkpoint.replace('\n3\n', '\n4\n'); }],
    ['checkpoint', (b) => { b.checkpoint = b.checkpoint.replace(/ (\S+)\n$/, (m, s) => ` ${flip(s, 10)}\n`); }],
  ];
  for (const [step, corrupt] of corruptions) {
    const bundle = structuredClone(cp.bundle);
    corrupt(bundle);
    const r = await V.verifyRecord({ bundle, vkey: cp.vkey, index: 2, devices });
    if (r.ok || r.failedStep !== step) failures.push(`corrupted bundle (${corrupt}): ${r.ok ? 'accepted' : `failed at ${r.failedStep}`}, want ${step}`);
  }
  const [name, id, key] = [cp.vkey.split('+')[0], cp.vkey.split('+')[1], cp.vkey.split('+').slice(2).join('+')];
  await expectThrow('vkey with a wrong key id', () => V.parseVerifierKey(`${name}+${id.slice(0, 7)}${id[7] === '0' ? '1' : '0'}+${key}`));
  await expectThrow('vkey under another name', () => V.parseVerifierKey(`${name}x+${id}+${key}`));

  // MQS1: TBS bytes, signatures, and the must-fail substitutions.
  const pk = hex(m.device_public_key);
  expectEq('mqs1 kid', V.hexEncode(await V.mqs1Kid(pk)), m.kid);
  for (const [i, c] of m.cases.entries()) {
    const sb = hex(c.signature_block);
    const digest = await V.sha256(hex(c.payload_hex));
    expectEq(`mqs1 case ${i} tbs`, V.hexEncode(V.mqs1Tbs(sb, c.device_id, c.topic, digest)), c.tbs);
    try {
      await V.verifyMqs1(pk, sb, c.device_id, c.topic, digest, c.retain);
    } catch (e) {
      failures.push(`mqs1 case ${i}: ${e.message}`);
    }
  }
  for (const f of m.must_fail) {
    const c = { ...m.cases[f.case], ...f };
    const digest = await V.sha256(hex(c.payload_hex));
    await expectThrow(`mqs1 must_fail "${f.why}"`, () => V.verifyMqs1(pk, hex(c.signature_block), c.device_id, c.topic, digest, c.retain));
  }
  return failures;
}
