// sealmq log explorer: the log's head — the latest checkpoint (a C2SP
// signed note, shown as served) and the recent blocks, kept up to date by
// the live stream (Server-Sent Events on /v1/blocks/live), or by polling
// when the stream is refused or down.

'use strict';

const LogView = (() => {
  const V = SealmqVerify;
  const { $, el, formatTime, relativeTime, hash, number, dl, showError, api } = Page;
  const BLOCKS_SHOWN = 20;
  const POLL_MS = 3000;

  const state = {
    checkpointSize: -1,
    blocks: new Map(), // height -> block
    latestHeight: null,
    source: null,
    pollTimer: null,
  };

  // ---- Checkpoint ------------------------------------------------------

  function renderCheckpoint(note) {
    const box = $('checkpoint');
    let parsed;
    try {
      parsed = V.parseCheckpoint(note);
    } catch (e) {
      showError(box, `The broker's checkpoint does not parse: ${e.message}`);
      return;
    }
    if (Number(parsed.size) < state.checkpointSize) return; // an older one arrived late
    state.checkpointSize = Number(parsed.size);
    $('tree-size').textContent = number(parsed.size);
    box.replaceChildren(
      dl([
        ['Origin', el('span', { class: 'mono' }, parsed.origin)],
        ['Tree size', el('span', { id: 'checkpoint-size' }, number(parsed.size))],
        ['Root', hash(V.hexEncode(parsed.root), 64)],
      ]),
      el('pre', { id: 'checkpoint-note', class: 'note', 'aria-label': 'signed note' }, note),
    );
  }

  async function loadCheckpoint() {
    try {
      renderCheckpoint(await api('/v1/checkpoint', 'text'));
    } catch (e) {
      if (e.status === 404) {
        $('checkpoint').replaceChildren(
          el('p', { class: 'muted' }, 'No checkpoint yet: the first block is sealed shortly after the first record.'),
        );
      } else showError($('checkpoint'), `Cannot load the checkpoint: ${e.message}`);
    }
  }

  // ---- Blocks ----------------------------------------------------------

  function blockRow(b, fresh) {
    return el(
      'tr',
      { class: fresh ? 'fresh' : null, dataset: { height: b.height, treeSize: b.tree_size } },
      el('td', { class: 'num' }, number(b.height)),
      el('td', { class: 'num' }, number(b.tree_size)),
      el('td', { class: 'num' }, number(b.leaf_count)),
      el('td', {}, el('span', { class: 'sealed' }, `${formatTime(b.sealed_ms)} (${relativeTime(b.sealed_ms)})`)),
      el('td', {}, el('a', {
        href: `#/records?from=${b.first_index}`,
        onclick: (ev) => {
          ev.preventDefault();
          Records.openRecord(b.first_index);
        },
        title: 'Open the first record of this block',
      }, `#${number(b.first_index)}`), b.leaf_count > 1 ? ` – #${number(b.first_index + b.leaf_count - 1)}` : ''),
      el('td', {}, hash(b.hash)),
    );
  }

  function renderBlocks(freshHeights = new Set()) {
    const heights = [...state.blocks.keys()].sort((a, b) => b - a).slice(0, BLOCKS_SHOWN);
    // Keep the map bounded to what is shown.
    for (const h of state.blocks.keys()) if (!heights.includes(h)) state.blocks.delete(h);
    const body = $('blocks');
    if (heights.length === 0) {
      body.replaceChildren(el('tr', { class: 'empty' }, el('td', { colspan: 6 }, 'No blocks sealed yet.')));
      return;
    }
    body.replaceChildren(...heights.map((h) => blockRow(state.blocks.get(h), freshHeights.has(h))));
  }

  /** Takes blocks from any source (first load, live event, poll). */
  function addBlocks(blocks) {
    const fresh = new Set();
    let newest = null;
    for (const b of blocks) {
      if (!state.blocks.has(b.height)) {
        state.blocks.set(b.height, b);
        // Highlight what arrived after the first load.
        if (state.latestHeight !== null) fresh.add(b.height);
      }
      if (state.latestHeight === null || b.height > state.latestHeight) {
        state.latestHeight = b.height;
        newest = b;
      }
    }
    renderBlocks(fresh);
    if (newest && newest.checkpoint) renderCheckpoint(newest.checkpoint);
    $('block-height').textContent = state.latestHeight === null ? '—' : number(state.latestHeight);
  }

  async function loadBlocks() {
    try {
      const page = await api(`/v1/blocks?limit=${BLOCKS_SHOWN}`);
      addBlocks(page.blocks);
      if (page.blocks.length === 0) renderBlocks();
    } catch (e) {
      showError($('blocks-error'), `Cannot load blocks: ${e.message}`);
    }
  }

  /** Blocks after the latest one known (after a gap in the live stream, or when polling). */
  async function catchUp() {
    const from = state.latestHeight === null ? null : state.latestHeight + 1;
    const page = await api(from === null ? `/v1/blocks?limit=${BLOCKS_SHOWN}` : `/v1/blocks?from=${from}&limit=200`);
    addBlocks(page.blocks);
    $('blocks-error').replaceChildren();
  }

  function setLive(mode, text) {
    const badge = $('live-status');
    badge.dataset.mode = mode;
    badge.textContent = text;
  }

  function startPolling() {
    if (state.pollTimer) return;
    setLive('polling', 'Polling');
    state.pollTimer = setInterval(() => {
      catchUp().catch((e) => {
        setLive('offline', 'Offline');
        showError($('blocks-error'), `Cannot reach the broker: ${e.message}. Retrying…`);
      });
    }, POLL_MS);
  }

  function stopPolling() {
    clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  function startLive() {
    if (!('EventSource' in window)) {
      startPolling();
      return;
    }
    const source = new EventSource('/v1/blocks/live');
    state.source = source;
    source.addEventListener('open', () => {
      stopPolling();
      setLive('live', 'Live');
      // Blocks sealed while the stream was down are not replayed by it.
      catchUp().catch(() => {});
    });
    source.addEventListener('block', (event) => {
      let block;
      try {
        block = JSON.parse(event.data);
      } catch {
        return;
      }
      if (state.latestHeight !== null && block.height > state.latestHeight + 1) {
        catchUp().catch(() => {});
      }
      addBlocks([block]);
    });
    source.addEventListener('error', () => {
      // The browser retries a dropped stream by itself (CONNECTING); a
      // refused one (CLOSED) is not retried. Either way, poll meanwhile.
      startPolling();
      if (source.readyState === EventSource.CLOSED) state.source = null;
    });
  }

  /** Keeps the blocks' "sealed … ago" current. */
  function startClock() {
    setInterval(() => {
      for (const row of document.querySelectorAll('#blocks tr[data-height]')) {
        const b = state.blocks.get(Number(row.dataset.height));
        if (b) row.querySelector('.sealed').textContent = `${formatTime(b.sealed_ms)} (${relativeTime(b.sealed_ms)})`;
      }
    }, 5000);
  }

  return { state, loadCheckpoint, loadBlocks, startLive, startClock };
})();
