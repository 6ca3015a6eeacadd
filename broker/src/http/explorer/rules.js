// sealmq log explorer: rules (spec/rules.md) — the Rules panel (the active
// rules, GET /v1/rules: name, filter, hash, install record, document) and
// what a record's view shows of them: a trigger's actions, an action's
// trigger and the rule that produced it (the install of that rule active
// at the action, found in GET /v1/rules/NAME by position and checked by
// its hash), and the install proof Verify checks (verify.js,
// checkRuleInstall).
//
// Links to records are plain `#/records/N` anchors: explorer.js opens the
// record on the hash change, so this file needs no other panel.

'use strict';

const RulesPanel = (() => {
  const { $, el, formatTime, hash, number, fill, showError, api } = Page;
  const RULES_POLL_MS = 5000;

  const state = {
    rules: null, // GET /v1/rules
  };

  const recordLink = (index, attrs = {}) =>
    el('a', { href: `#/records/${index}`, class: 'mono', ...attrs }, `#${number(index)}`);

  // ---- The panel ---------------------------------------------------------

  function ruleRow(rule) {
    return [
      el('tr', { dataset: { rule: rule.name } },
        el('td', { class: 'mono', dataset: { field: 'name' } }, rule.name),
        el('td', { class: 'mono topic', dataset: { field: 'on' } }, rule.on),
        el('td', { class: 'mono small', dataset: { field: 'publish' } },
          `${rule.publish.topic} (QoS ${rule.publish.qos}${rule.publish.retain ? ', retained' : ''})`),
        el('td', { dataset: { field: 'hash' } }, hash(rule.rule_hash)),
        el('td', { class: 'num', dataset: { field: 'install' } }, recordLink(rule.install_index))),
      el('tr', { class: 'rule-document-row', dataset: { ruleDocument: rule.name } },
        el('td', { colspan: 5 },
          el('details', {},
            el('summary', { class: 'small' }, `Document (${rule.when ? `when ${rule.when}` : 'always'})`),
            el('pre', { class: 'note rule-document' }, rule.document)))),
    ];
  }

  function renderRules() {
    const box = $('rules');
    const r = state.rules;
    $('rules-cel').textContent = r ? `evaluated with ${r.cel_version}` : '';
    if (!r.rules.length) {
      box.replaceChildren(el('p', { class: 'muted', id: 'no-rules' },
        'No rules are active. Install one with `sealmq rule add FILE`; it is logged as a record, and so is every action it takes.'));
      return;
    }
    fill(box, el('div', { class: 'table-wrap' },
      el('table', { class: 'table', id: 'rules-table' },
        el('thead', {}, el('tr', {},
          el('th', {}, 'Name'), el('th', {}, 'On (filter)'), el('th', {}, 'Publishes'),
          el('th', {}, 'Rule hash'), el('th', { class: 'num' }, 'Installed at'))),
        el('tbody', {}, r.rules.map(ruleRow)))));
  }

  async function loadRules() {
    try {
      state.rules = await api('/v1/rules');
      renderRules();
    } catch (e) {
      showError($('rules'), `Cannot load the rules: ${e.message}`);
    }
  }

  function startPolling() {
    setInterval(() => loadRules(), RULES_POLL_MS);
  }

  // ---- What a record's view shows of rules -------------------------------

  /**
   * The install of rule `name` that was active when record `index` was
   * logged: the last install or removal of that name before it, if that was
   * an install (spec/rules.md: the active rules at index i). The broker's
   * answer only picks it; Verify checks its hash and inclusion.
   */
  async function installBefore(name, index) {
    const history = await api(`/v1/rules/${encodeURIComponent(name)}`);
    const before = history.history.filter((event) => event.index < index);
    const last = before[before.length - 1];
    return last && last.action === 'installed' ? last : null;
  }

  /** A trigger's actions, or an action's trigger and rule (with its document, filled in when fetched). */
  function causeSection(view) {
    if (view.kind !== 'publish') return null;
    if (!view.cause) {
      const actions = view.actions || [];
      return el('section', { id: 'record-actions' },
        el('h3', {}, 'Rule actions'),
        actions.length === 0
          ? el('p', { class: 'muted' }, 'No rule fired on this message.')
          : el('p', {}, `This message triggered ${actions.length} action${actions.length === 1 ? '' : 's'}: `,
            actions.map((index, i) => [i ? ', ' : '', recordLink(index, { dataset: { action: index } })])));
    }
    const c = view.cause;
    const documentBox = el('div', { id: 'record-rule' }, el('p', { class: 'muted' }, 'Loading the rule…'));
    installBefore(c.rule_name, view.index).then((install) => {
      if (!install) {
        showError(documentBox, `No install of rule ${c.rule_name} was active at this record.`);
      } else if (install.rule_hash !== c.rule_hash) {
        showError(documentBox, `The install of rule ${c.rule_name} active here (#${install.index}) has another hash than this action's.`);
      } else {
        fill(documentBox,
          el('p', {}, `Rule ${c.rule_name}, installed at `, recordLink(install.index, { id: 'record-rule-install' }),
            ` (${formatTime(install.at_ms)}):`),
          el('pre', { class: 'note rule-document', id: 'record-rule-document' }, install.document));
      }
    }).catch((e) => showError(documentBox, `Cannot load rule ${c.rule_name}: ${e.message}`));
    return el('section', { id: 'record-cause' },
      el('h3', {}, 'Cause'),
      el('p', {}, 'Logged by rule ', el('span', { class: 'mono', id: 'record-rule-name' }, c.rule_name),
        ' for the message at ', recordLink(c.trigger_index, { id: 'record-trigger' }), '.'),
      documentBox);
  }

  /** Verify's `rule` input for an action: the install's proof at the action's tree size. */
  async function verifyInput(view, bundle) {
    if (view.kind !== 'publish' || !view.cause) return null;
    const install = await installBefore(view.cause.rule_name, view.index);
    if (!install) return { install: null };
    return { install: await api(`/v1/proof/${install.index}?size=${bundle.tree_size}`) };
  }

  return { state, loadRules, startPolling, causeSection, verifyInput };
})();
