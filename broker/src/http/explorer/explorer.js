// sealmq log explorer: the start — wires the panels to the page and starts
// loading. Loaded last; the scripts before it, in index.html's order:
//
//   proofs.js     hashes, Merkle proofs, signed notes, cosignatures, quorum
//   verify.js     records, MQS1, the whole check of one record
//   page.js       DOM building, formatting, the API client
//   key.js        the verifier key panel and the key Verify trusts
//   witnesses.js  the Witnesses panel and what Verify needs of it
//   rules.js      the Rules panel; triggers, actions and their rule
//   records.js    search, one record, Verify
//   log.js        the latest checkpoint and blocks, live
//
// `window.sealmq` is what the browser test (tests/browser/explorer.mjs)
// reaches into: `verify` runs against the spec's vectors.

'use strict';

const Explorer = (() => {
  const { $ } = Page;

  function route() {
    const m = /^#\/records\/(\d+)$/.exec(location.hash);
    if (m) Records.openRecord(Number(m[1]));
  }

  function init() {
    $('search-form').addEventListener('submit', Records.startSearch);
    $('records-next').addEventListener('click', Records.nextPage);
    $('records-prev').addEventListener('click', Records.prevPage);
    $('goto-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const value = $('goto-index').value.trim();
      if (/^\d+$/.test(value)) Records.openRecord(Number(value));
    });
    window.addEventListener('hashchange', route);
    LogView.startClock();
    WitnessPanel.startPolling();
    RulesPanel.startPolling();
    Promise.all([
      KeyPanel.loadVkey(),
      LogView.loadCheckpoint(),
      LogView.loadBlocks(),
      WitnessPanel.loadWitnesses(),
      RulesPanel.loadRules(),
    ]).then(() => {
      document.body.dataset.ready = 'true';
    });
    LogView.startLive();
    Records.startSearch();
    route();
  }

  const state = {
    key: KeyPanel.state,
    log: LogView.state,
    witnesses: WitnessPanel.state,
    rules: RulesPanel.state,
    records: Records.state,
  };
  return { init, state, openRecord: Records.openRecord, loadWitnesses: WitnessPanel.loadWitnesses };
})();

window.sealmq = { verify: SealmqVerify, explorer: Explorer };
if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', Explorer.init);
else Explorer.init();
