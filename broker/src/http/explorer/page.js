// sealmq log explorer: what every panel of the page uses — building DOM
// nodes, formatting numbers and times, and fetching the JSON API of the
// same listener.
//
// Everything the broker returns is put in the DOM with textContent, never
// as HTML: topics, device ids and payloads are attacker data. `el` is the
// one way panels build nodes, so that holds by construction.

'use strict';

const Page = (() => {
  // ---- DOM helpers -----------------------------------------------------

  const $ = (id) => document.getElementById(id);

  /** el('td', {class: 'x', title: 't'}, 'text', childNode…) */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'dataset') Object.assign(node.dataset, v);
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function formatTime(ms) {
    if (ms === null || ms === undefined) return '—';
    const d = new Date(Number(ms));
    if (Number.isNaN(d.getTime())) return String(ms);
    return d.toISOString().replace('T', ' ').replace('Z', ' UTC');
  }

  function relativeTime(ms) {
    const s = Math.round((Date.now() - Number(ms)) / 1000);
    if (s < 5) return 'just now';
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  /** A hash shown shortened, whole in its tooltip and when selected. */
  const hash = (hex, keep = 16) =>
    el('span', { class: 'hash', title: hex }, hex && hex.length > keep ? `${hex.slice(0, keep)}…` : hex || '—');

  const number = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));

  function dl(rows) {
    return el(
      'dl',
      { class: 'fields' },
      rows.filter(Boolean).map(([k, v, id]) => [el('dt', {}, k), el('dd', id ? { id } : {}, v)]),
    );
  }

  /** replaceChildren that skips absent (null/false) parts. */
  function fill(node, ...children) {
    node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  }

  function showError(where, message) {
    where.replaceChildren(el('div', { class: 'notice error', role: 'alert' }, message));
  }

  // ---- API -------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, as = 'json') {
    let response;
    try {
      response = await fetch(path, { cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, `the broker cannot be reached (${e.message})`);
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        if (body && body.error) message = body.error;
      } catch {
        // Not JSON: keep the status line.
      }
      throw new ApiError(response.status, message);
    }
    return as === 'text' ? response.text() : response.json();
  }

  return { $, el, formatTime, relativeTime, hash, number, dl, fill, showError, api };
})();
