// sealmq log explorer: the Witnesses panel — GET /v1/witnesses (each
// witness of the broker's C2SP tlog-policy: the size it cosigned, its last
// answer; the quorum rule; recent cosigned checkpoints), polled, and what
// Verify needs of it: which checkpoint to prove against and the witnesses'
// keys and quorum rule, so that the browser checks the cosignatures itself
// (verify.js) rather than take the broker's word.

'use strict';

const WitnessPanel = (() => {
  const V = SealmqVerify;
  const { $, el, formatTime, relativeTime, number, dl, fill, showError, api } = Page;
  const WITNESS_POLL_MS = 2000;

  const state = {
    witnesses: null, // GET /v1/witnesses, null: none configured (404) or not loaded
    witnessedNote: null, // GET /v1/checkpoint/witnessed
  };

  /** POSIX seconds or milliseconds (either may come) as milliseconds. */
  const asMs = (t) => (t === null || t === undefined ? null : Number(t) < 1e11 ? Number(t) * 1000 : Number(t));

  const when = (t) => (asMs(t) === null ? '—' : `${formatTime(asMs(t))} (${relativeTime(asMs(t))})`);

  /** When a witness cosigned its latest size: the API's field, else its timestamp in `recent`. */
  function cosignedAt(w, recent) {
    if (w.cosigned_at !== undefined && w.cosigned_at !== null) return w.cosigned_at;
    const entry = recent.find((r) => r.size === w.cosigned_size);
    const mine = entry && (entry.cosigners || []).find((c) => c.name === w.name);
    return mine ? mine.timestamp : null;
  }

  function witnessRow(w, recent) {
    const failing = w.last_error || (w.last_status && Number(w.last_status) >= 400);
    const status = w.last_status === null || w.last_status === undefined ? '—' : String(w.last_status);
    return el(
      'tr',
      { dataset: { witness: w.name } },
      el('td', { class: 'mono' }, w.name),
      el('td', {}, el('span', { class: 'hash mono', title: w.vkey }, w.vkey && w.vkey.length > 28 ? `${w.vkey.slice(0, 28)}…` : w.vkey || '—')),
      el('td', { class: 'mono small' }, w.url || el('span', { class: 'muted' }, 'not asked')),
      el('td', { class: 'num', dataset: { field: 'cosigned-size' } }, number(w.cosigned_size)),
      el('td', { class: 'small' }, when(cosignedAt(w, recent))),
      el('td', { class: failing ? 'status bad' : 'status', dataset: { field: 'status' } },
        status, w.last_attempt_ms ? el('span', { class: 'small muted' }, ` ${relativeTime(w.last_attempt_ms)}`) : null,
        w.last_error ? el('div', { class: 'small' }, w.last_error) : null),
      el('td', { class: 'num small' }, `${number(w.requests)} / ${number(w.refusals)}`),
    );
  }

  function renderWitnesses() {
    const box = $('witnesses');
    const w = state.witnesses;
    const size = w && w.witnessed_size !== null && w.witnessed_size !== undefined ? w.witnessed_size : null;
    $('witnessed-stat').hidden = !w;
    $('witnessed-size').textContent = number(size);
    if (!w) {
      box.replaceChildren(el('p', { class: 'muted', id: 'no-witnesses' },
        'No witnesses configured: every checkpoint is signed by the log alone, and nobody else vouches that it is the only history.'));
      return;
    }
    const recent = Array.isArray(w.recent) ? w.recent : [];
    const quorum = typeof w.quorum === 'string' ? w.quorum : w.quorum ? 'required by the broker\'s policy' : 'none (quorum none)';
    fill(
      box,
      dl([
        ['Quorum', el('span', { class: 'mono', id: 'witness-quorum' }, quorum)],
        ['Witnessed size', el('span', { id: 'witness-witnessed-size' }, size === null ? 'none yet' : number(size))],
      ]),
      el('div', { class: 'table-wrap' }, el('table', { class: 'table', id: 'witness-table' },
        el('thead', {}, el('tr', {},
          el('th', {}, 'Witness'), el('th', {}, 'Key'), el('th', {}, 'URL'), el('th', { class: 'num' }, 'Cosigned size'),
          el('th', {}, 'Cosigned'), el('th', {}, 'Last status'), el('th', { class: 'num' }, 'Requests / refusals'))),
        el('tbody', {}, (w.witnesses || []).length
          ? w.witnesses.map((x) => witnessRow(x, recent))
          : el('tr', { class: 'empty' }, el('td', { colspan: 7 }, 'The policy lists no witnesses.'))))),
      el('h3', { class: 'small muted' }, 'Recent cosigned checkpoints'),
      el('div', { class: 'table-wrap' }, el('table', { class: 'table', id: 'witness-recent' },
        el('thead', {}, el('tr', {}, el('th', { class: 'num' }, 'Tree size'), el('th', {}, 'Sealed'),
          el('th', {}, 'Cosigned by'), el('th', {}, 'Quorum'))),
        el('tbody', {}, recent.length
          ? recent.map((r) => el('tr', { dataset: { size: r.size, quorum: String(r.quorum) } },
            el('td', { class: 'num' }, number(r.size)),
            el('td', { class: 'small' }, r.sealed_ms ? formatTime(r.sealed_ms) : '—'),
            el('td', {}, (r.cosigners || []).map((c, i) => [i ? ', ' : '',
              el('span', { title: when(c.timestamp) }, c.name)])),
            el('td', {}, r.quorum === true ? 'met' : r.quorum === false ? 'not met' : '—')))
          : el('tr', { class: 'empty' }, el('td', { colspan: 4 }, 'No checkpoint cosigned yet.'))))),
    );
  }

  async function loadWitnesses() {
    if (state.noWitnesses) return;
    try {
      state.witnesses = await api('/v1/witnesses');
    } catch (e) {
      if (e.status === 404) {
        // Configuration, not a passing state: stop asking.
        state.witnesses = null;
        state.noWitnesses = true;
      } else {
        showError($('witnesses'), `Cannot load the witnesses: ${e.message}`);
        return;
      }
    }
    try {
      state.witnessedNote = state.witnesses ? await api('/v1/checkpoint/witnessed', 'text') : null;
    } catch {
      state.witnessedNote = null;
    }
    renderWitnesses();
  }

  function startPolling() {
    // Cosignatures arrive after a block is sealed; a slow poll keeps up.
    setInterval(() => loadWitnesses(), WITNESS_POLL_MS);
  }

  // ---- What Verify needs -----------------------------------------------
  // Both take the witnesses as loaded when Verify started (`state.witnesses`),
  // so that a poll landing meanwhile cannot mix two answers in one check.

  /** The proof's query: against the latest witnessed checkpoint when it covers the record. */
  function proofQuery(w, index) {
    const covered = w && w.witnessed_size !== null && w.witnessed_size !== undefined && w.witnessed_size > index;
    return covered ? '?witnessed=true' : '';
  }

  /**
   * verifyRecord's `witnesses` for a proof bundle (null without witnesses):
   * the quorum rule, each witness's key, and the broker's claim about that
   * checkpoint's quorum (used only when the rule is not known here).
   */
  function verifyInput(w, bundle) {
    if (!w) return null;
    let claimed = null;
    let size = null;
    try {
      size = Number(V.parseCheckpoint(bundle.checkpoint).size);
    } catch {
      // verifyRecord reports a malformed checkpoint at its own step.
    }
    const entry = (w.recent || []).find((r) => r.size === size);
    if (size !== null && size === w.witnessed_size) claimed = true;
    else if (entry && typeof entry.quorum === 'boolean') claimed = entry.quorum;
    return { quorum: w.quorum, claimed, list: (w.witnesses || []).map(({ name, vkey }) => ({ name, vkey })) };
  }

  return { state, loadWitnesses, startPolling, proofQuery, verifyInput };
})();
