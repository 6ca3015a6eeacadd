// sealmq log explorer: the records — search by device, topic filter and
// kind, paged; one record with its payload and MQS1 fields; and Verify,
// which fetches the record's proof and checks it in this browser
// (verify.js) against the trusted key (key.js) and, with witnesses, their
// cosignatures and quorum (witnesses.js), and for a rule's action the
// install of the rule that ran (rules.js).

'use strict';

const Records = (() => {
  const V = SealmqVerify;
  const { $, el, formatTime, number, dl, fill, showError, api } = Page;
  const PAGE_SIZE = 25;

  const state = {
    search: { params: null, cursors: [], next: null },
    searchSeq: 0,
    record: null, // {view, payload}
    recordSeq: 0,
    verifying: 0,
  };

  // ---- Record search ---------------------------------------------------

  function searchParams() {
    const params = new URLSearchParams();
    const device = $('search-device').value.trim();
    const topic = $('search-topic').value.trim();
    const kind = $('search-kind').value;
    const order = $('search-order').value;
    if (device) params.set('device', device);
    if (topic) params.set('topic', topic);
    if (kind) params.set('kind', kind);
    if (order !== 'desc') params.set('order', order);
    params.set('limit', String(PAGE_SIZE));
    return params;
  }

  async function search(cursor) {
    const params = new URLSearchParams(state.search.params);
    if (cursor !== null && cursor !== undefined) params.set('cursor', String(cursor));
    const body = $('records');
    const status = $('records-status');
    // Only the latest search may render: an older answer can arrive later.
    const seq = ++state.searchSeq;
    status.textContent = 'Searching…';
    body.setAttribute('aria-busy', 'true');
    try {
      const page = await api(`/v1/records?${params}`);
      if (seq !== state.searchSeq) return;
      state.search.next = page.next;
      renderRecords(page.records);
      const n = state.search.cursors.length;
      status.textContent = page.records.length === 0
        ? 'No records match.'
        : `Page ${n}: ${page.records.length} record${page.records.length === 1 ? '' : 's'}${page.next === null ? ', end of results' : ''}`;
    } catch (e) {
      if (seq !== state.searchSeq) return;
      body.replaceChildren();
      status.textContent = '';
      showError($('records-error'), e.status === 400 ? `Invalid search: ${e.message}` : `Search failed: ${e.message}`);
      state.search.next = null;
    } finally {
      if (seq === state.searchSeq) body.removeAttribute('aria-busy');
      $('records-prev').disabled = state.search.cursors.length <= 1;
      $('records-next').disabled = state.search.next === null || state.search.next === undefined;
    }
  }

  function renderRecords(records) {
    $('records-error').replaceChildren();
    const body = $('records');
    body.replaceChildren(
      ...records.map((r) =>
        el(
          'tr',
          {
            class: state.record && state.record.view.index === r.index ? 'clickable selected' : 'clickable',
            tabindex: '0',
            dataset: { index: r.index },
            onclick: () => openRecord(r.index),
            onkeydown: (ev) => {
              if (ev.key === 'Enter') openRecord(r.index);
            },
          },
          el('td', { class: 'num' }, `#${number(r.index)}`),
          el('td', {}, formatTime(r.kind === 'publish' ? r.received_ms : r.at_ms)),
          el('td', {}, el('span', { class: 'mono' }, r.kind === 'rule' ? `$rule/${r.rule_name}` : r.device_id)),
          el('td', {}, r.kind === 'publish' ? el('span', { class: 'mono topic' }, r.topic) : el('span', { class: 'muted' }, `${r.kind}: ${r.action.replace('_', ' ')}`)),
          el('td', {}, authTag(r)),
          el('td', { class: 'num' }, r.kind === 'publish' ? `${number(r.payload_len)} B` : ''),
          el('td', { class: 'num' }, r.block === null ? el('span', { class: 'muted' }, 'pending') : number(r.block)),
        ),
      ),
    );
  }

  function authTag(r) {
    if (r.kind === 'registry') return el('span', { class: 'tag registry' }, 'registry');
    if (r.kind === 'rule') return el('span', { class: 'tag rule' }, 'rule');
    const [cls, text] = { mqs1: ['signed', 'signed'], rule: ['rule', 'rule action'] }[r.auth] || ['unsigned', 'unsigned'];
    return el('span', { class: `tag ${cls}` }, text);
  }

  function startSearch(event) {
    if (event) event.preventDefault();
    state.search = { params: searchParams().toString(), cursors: [null], next: null };
    search(null);
  }

  function nextPage() {
    if (state.search.next === null) return;
    state.search.cursors.push(state.search.next);
    search(state.search.next);
  }

  function prevPage() {
    if (state.search.cursors.length <= 1) return;
    state.search.cursors.pop();
    search(state.search.cursors[state.search.cursors.length - 1]);
  }

  // ---- One record ------------------------------------------------------

  /** Payload bytes as text when they are UTF-8, else a hex dump. */
  function describePayload(bytes) {
    try {
      const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
      return { encoding: 'utf8', text };
    } catch {
      const lines = [];
      for (let at = 0; at < bytes.length; at += 16) {
        const chunk = bytes.slice(at, at + 16);
        const hexPart = [...chunk].map((b) => b.toString(16).padStart(2, '0')).join(' ').padEnd(47, ' ');
        const ascii = [...chunk].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
        lines.push(`${at.toString(16).padStart(8, '0')}  ${hexPart}  |${ascii}|`);
      }
      return { encoding: 'hex', text: lines.join('\n') };
    }
  }

  function renderRecord(view, payload) {
    const box = $('record-detail');
    const rows = [
      ['Index', `#${number(view.index)}`],
      ['Kind', { publish: 'Publish', registry: 'Registry event', rule: 'Rule event' }[view.kind] || view.kind],
      ['Block', view.block === null ? el('span', { class: 'muted' }, 'not sealed yet') : number(view.block)],
    ];
    if (view.kind === 'publish') {
      rows.push(
        ['Received', formatTime(view.received_ms)],
        ['Device', el('span', { class: 'mono', id: 'record-device' }, view.device_id)],
        ['Topic', el('span', { class: 'mono topic', id: 'record-topic' }, view.topic)],
        ['QoS', String(view.qos)],
        ['Retain', view.retain ? 'yes' : 'no'],
        ['Payload length', `${number(view.payload_len)} bytes`],
        ['Payload SHA-256', el('span', { class: 'mono wrap' }, view.payload_sha256)],
        ['Authentication', {
          mqs1: () => el('span', { class: 'tag signed' }, 'MQS1 signed'),
          rule: () => el('span', { class: 'tag rule' }, 'a rule\'s action (logged by the broker)'),
        }[view.auth]?.() || el('span', { class: 'tag unsigned' }, 'unsigned (legacy)')],
      );
    } else if (view.kind === 'rule') {
      rows.push(
        ['At', formatTime(view.at_ms)],
        ['Rule', el('span', { class: 'mono', id: 'record-rule-name' }, view.rule_name)],
        ['Action', view.action],
        view.rule_hash ? ['Rule hash', el('span', { class: 'mono wrap', id: 'record-rule-hash' }, view.rule_hash)] : null,
      );
    } else {
      rows.push(
        ['At', formatTime(view.at_ms)],
        ['Device', el('span', { class: 'mono', id: 'record-device' }, view.device_id)],
        ['Action', view.action.replace('_', ' ')],
        view.public_key ? ['Public key', el('span', { class: 'mono wrap' }, view.public_key)] : null,
        view.kid ? ['Key id', el('span', { class: 'mono' }, view.kid)] : null,
        view.policy ? ['Policy', view.policy] : null,
      );
    }
    rows.push(['Leaf hash', el('span', { class: 'mono wrap' }, view.leaf_hash)]);

    let payloadSection = null;
    if (view.kind === 'publish') {
      if (payload === null) {
        payloadSection = el('section', {},
          el('h3', {}, 'Payload'),
          el('p', { id: 'record-payload', class: 'muted', dataset: { encoding: 'deleted' } },
            'The stored payload was erased (a retention rule, the size cap or `sealmq erase`; the $sealmq/erasure records on $SYS/sealmq/erasure say which). The record still commits to its SHA-256, so its proofs hold.'));
      } else {
        const shown = describePayload(payload);
        payloadSection = el('section', {},
          el('h3', {}, 'Payload ', el('span', { class: 'muted small' }, shown.encoding === 'utf8' ? 'UTF-8 text' : 'binary, shown as hex')),
          el('pre', { id: 'record-payload', class: 'payload', dataset: { encoding: shown.encoding } }, shown.text));
      }
    }

    let signatureSection = null;
    if (view.kind === 'publish' && view.mqs1) {
      const m = view.mqs1;
      signatureSection = el('section', { id: 'record-mqs1' },
        el('h3', {}, 'MQS1 signature'),
        dl([
          ['Key id', el('span', { class: 'mono', id: 'mqs1-kid' }, m.kid)],
          ['Counter', el('span', { class: 'mono' }, String(m.ctr))],
          ['Device time', m.ts_ms === 0 ? el('span', { class: 'muted' }, 'no device clock') : formatTime(m.ts_ms)],
          ['Signed retain', m.retain ? 'yes' : 'no'],
          ['Signature', el('span', { class: 'mono wrap' }, m.sig)],
          ['Signature block', el('span', { class: 'mono wrap' }, m.sb)],
        ]));
    }

    const documentSection = view.kind === 'rule' && view.document !== undefined
      ? el('section', {}, el('h3', {}, 'Rule document'), el('pre', { class: 'note rule-document', id: 'record-document' }, view.document))
      : null;

    fill(
      box,
      el('div', { class: 'card-head' },
        el('h2', { id: 'record-title' }, `Record #${number(view.index)}`),
        el('div', { class: 'row' },
          el('button', { type: 'button', id: 'verify-button', class: 'button primary', onclick: () => verifyShown() }, 'Verify'),
          el('button', { type: 'button', class: 'button secondary', 'aria-label': 'Close', onclick: closeRecord }, 'Close'))),
      el('div', { id: 'verify-result', class: 'verify', dataset: { status: 'idle' }, 'aria-live': 'polite' },
        el('p', { class: 'muted' }, 'Verify checks this record against the log\'s signed checkpoint in your browser: the signature on the checkpoint, the Merkle inclusion proof, and the device\'s signature (for a rule\'s action, the install of the rule that produced it).')),
      dl(rows),
      RulesPanel.causeSection(view),
      documentSection,
      payloadSection,
      signatureSection,
    );
    box.hidden = false;
  }

  async function openRecord(index) {
    const box = $('record-detail');
    box.hidden = false;
    box.replaceChildren(el('p', { class: 'muted' }, `Loading record #${number(index)}…`));
    if (location.hash !== `#/records/${index}`) history.replaceState(null, '', `#/records/${index}`);
    const seq = ++state.recordSeq;
    try {
      const view = await api(`/v1/records/${index}`);
      if (seq !== state.recordSeq) return;
      const payload = view.payload === null || view.payload === undefined ? null : V.base64Decode(view.payload);
      state.record = { view, payload };
      renderRecord(view, payload);
      for (const row of document.querySelectorAll('#records tr[data-index]')) {
        row.classList.toggle('selected', Number(row.dataset.index) === view.index);
      }
      box.scrollIntoView({ block: 'nearest' });
    } catch (e) {
      if (seq !== state.recordSeq) return;
      state.record = null;
      showError(box, e.status === 404 ? `There is no record #${index} yet.` : `Cannot load record #${index}: ${e.message}`);
    }
  }

  function closeRecord() {
    state.record = null;
    $('record-detail').hidden = true;
    history.replaceState(null, '', location.pathname);
  }

  function renderVerify(result) {
    const box = $('verify-result');
    box.dataset.status = result.ok ? 'ok' : 'failed';
    if (result.failedStep) box.dataset.failedStep = result.failedStep;
    else delete box.dataset.failedStep;
    const failed = result.steps.find((s) => s.status === 'failed');
    const icon = { ok: '✓', failed: '✗', skipped: '–', unwitnessed: '!', 'not-run': '·' };
    if (result.witnessed === true || result.witnessed === false) box.dataset.witnessed = String(result.witnessed);
    else delete box.dataset.witnessed;
    const witnessed = {
      true: ' and cosigned by a quorum of its witnesses',
      false: ', but that checkpoint is not witnessed: the witnesses\' quorum did not cosign it',
    }[result.witnessed] || '';
    fill(
      box,
      el('div', { class: 'verdict', id: 'verify-verdict' },
        result.ok
          ? `Verified: this record is in the log, under a checkpoint signed by the trusted key${witnessed}.`
          : `Verification failed at "${failed.label}". This record is not proven to be in the log under the trusted key.`),
      el('ol', { class: 'steps', id: 'verify-steps' },
        result.steps.map((s) =>
          el('li', { class: `step ${s.status}`, dataset: { step: s.id, status: s.status } },
            el('span', { class: 'icon', 'aria-hidden': 'true' }, icon[s.status]),
            el('span', { class: 'label' }, s.label),
            el('span', { class: 'detail' }, s.status === 'not-run' ? 'not run' : s.detail)))),
      result.ruleDocument
        ? el('div', {}, el('p', { class: 'small' }, 'The rule document that produced this action, as checked:'),
          el('pre', { class: 'note rule-document', id: 'verify-rule-document' }, new TextDecoder().decode(result.ruleDocument)))
        : null,
    );
  }

  async function verifyShown() {
    if (!state.record) return;
    const { view, payload } = state.record;
    const run = ++state.verifying;
    const box = $('verify-result');
    box.dataset.status = 'running';
    delete box.dataset.failedStep;
    box.replaceChildren(el('p', { class: 'muted' }, 'Verifying…'));
    const failEarly = (id, detail) => {
      const steps = V.STEPS.map(([sid, label]) => ({ id: sid, label, status: 'not-run', detail: '' }));
      steps.unshift({ id, label: 'Fetch proof', status: 'failed', detail });
      return { ok: false, failedStep: id, steps };
    };
    let result;
    try {
      // One snapshot of the witnesses for the whole check; the proof is
      // against the latest witnessed checkpoint when it covers the record.
      const w = WitnessPanel.state.witnesses;
      const bundle = await api(`/v1/proof/${view.index}${WitnessPanel.proofQuery(w, view.index)}`);
      const signed = view.kind === 'publish' && view.auth === 'mqs1';
      const devices = signed ? (await api('/v1/devices')).devices : [];
      const witnesses = WitnessPanel.verifyInput(w, bundle);
      const rule = await RulesPanel.verifyInput(view, bundle);
      result = await V.verifyRecord({ bundle, vkey: KeyPanel.trustedVkey(), index: view.index, view, payload, devices, witnesses, rule });
    } catch (e) {
      const detail = e.status === 404 ? 'the record is not sealed yet; try again after the next block' : e.message;
      result = failEarly('fetch', detail);
    }
    if (run === state.verifying && state.record && state.record.view.index === view.index) renderVerify(result);
  }

  return { state, startSearch, nextPage, prevPage, openRecord };
})();
