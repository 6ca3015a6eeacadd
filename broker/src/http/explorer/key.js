// sealmq log explorer: the verifier key panel — the key the broker serves,
// and a key the user pins (kept in this browser), which Verify then uses
// instead: a proof is only as good as the key it is checked with.

'use strict';

const KeyPanel = (() => {
  const V = SealmqVerify;
  const { $, el, dl, fill, showError, api } = Page;
  const PINNED_KEY = 'sealmq.explorer.pinnedVkey';

  const state = {
    servedVkey: null,
    pinnedVkey: localStorage.getItem(PINNED_KEY),
  };

  // ---- The key Verify trusts --------------------------------------------

  function trustedVkey() {
    return state.pinnedVkey || state.servedVkey;
  }

  async function renderVkey() {
    const box = $('vkey-panel');
    const served = state.servedVkey;
    let parsed = null;
    let problem = null;
    try {
      parsed = await V.parseVerifierKey(served);
    } catch (e) {
      problem = e.message;
    }
    const pinned = state.pinnedVkey;
    const mismatch = pinned && pinned !== served;
    fill(
      box,
      el('pre', { id: 'vkey', class: 'note vkey' }, served),
      parsed ? dl([['Key name', el('span', { class: 'mono' }, parsed.name)], ['Key id', el('span', { class: 'mono' }, V.hexEncode(parsed.keyId))], ['Algorithm', 'Ed25519']]) : null,
      problem ? el('div', { class: 'notice error' }, `This key does not parse: ${problem}`) : null,
      mismatch
        ? el('div', { class: 'notice warn', id: 'vkey-mismatch' }, 'This broker serves a different key from the one you pinned. Verification uses your pinned key.')
        : null,
      el(
        'details',
        { class: 'pin' },
        el('summary', {}, pinned ? 'Pinned key (used for verification)' : 'Pin a key you obtained independently'),
        el('p', { class: 'muted' }, 'A proof is only as good as the key it is checked with. Paste the log\'s verifier key from a source you trust; this browser keeps it.'),
        el('textarea', { id: 'pin-input', rows: 2, spellcheck: 'false', placeholder: 'origin+keyid+base64key' }, pinned || ''),
        el('div', { class: 'row' },
          el('button', { type: 'button', id: 'pin-button', class: 'button', onclick: pinKey }, 'Pin key'),
          pinned ? el('button', { type: 'button', id: 'unpin-button', class: 'button secondary', onclick: unpinKey }, 'Forget pinned key') : null,
          el('span', { id: 'pin-status', class: 'muted' }),
        ),
      ),
    );
  }

  async function pinKey() {
    const text = $('pin-input').value.trim();
    try {
      await V.parseVerifierKey(text);
    } catch (e) {
      $('pin-status').textContent = `Not pinned: ${e.message}`;
      return;
    }
    localStorage.setItem(PINNED_KEY, text);
    state.pinnedVkey = text;
    await renderVkey();
  }

  async function unpinKey() {
    localStorage.removeItem(PINNED_KEY);
    state.pinnedVkey = null;
    await renderVkey();
  }

  async function loadVkey() {
    try {
      state.servedVkey = (await api('/v1/vkey', 'text')).trim();
      await renderVkey();
    } catch (e) {
      showError($('vkey-panel'), `Cannot load the verifier key: ${e.message}`);
    }
  }

  return { state, trustedVkey, loadVkey };
})();
