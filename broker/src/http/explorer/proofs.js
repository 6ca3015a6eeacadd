// sealmq log explorer: the proof checks, part 1 of 2 (verify.js is part 2).
//
// `SealmqProofs`: pure functions (bytes in, answers out; no DOM, no fetch)
// for what a checkpoint and a proof are made of: encodings, SHA-256 and
// Ed25519 with Web Crypto, RFC 6962 / 9162 Merkle inclusion proofs, C2SP
// signed notes and verifier keys, C2SP tlog-cosignature witness
// cosignatures and the tlog-policy quorum. They follow
// ../shared/spec/log.md and are exercised against the spec's vectors by
// the browser test (through `window.sealmq.verify`), so the page checks
// proofs itself instead of trusting the broker's word.
//
// Plain scripts, no build step: index.html loads them in dependency order
// and each defines one global namespace.

'use strict';

const SealmqProofs = (() => {
  const utf8 = new TextEncoder();

  // ---- Encodings -------------------------------------------------------

  function hexEncode(bytes) {
    let out = '';
    for (const b of bytes) out += b.toString(16).padStart(2, '0');
    return out;
  }

  function hexDecode(text) {
    if (typeof text !== 'string' || text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) {
      throw new Error('not hex');
    }
    const out = new Uint8Array(text.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(i * 2, i * 2 + 2), 16);
    return out;
  }

  // Standard, padded base64 only: a second spelling of the same bytes in a
  // signed note would be a different note.
  function base64Decode(text) {
    if (typeof text !== 'string' || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) {
      throw new Error('not standard padded base64');
    }
    const binary = atob(text);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    if (base64Encode(out) !== text) throw new Error('not canonical base64');
    return out;
  }

  function base64Encode(bytes) {
    let binary = '';
    for (const b of bytes) binary += String.fromCharCode(b);
    return btoa(binary);
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  function equalBytes(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  function str16(text) {
    const bytes = utf8.encode(text);
    return concat(new Uint8Array([bytes.length >> 8, bytes.length & 0xff]), bytes);
  }

  // ---- Web Crypto ------------------------------------------------------

  function subtle() {
    // crypto.subtle exists only in secure contexts (HTTPS, or loopback).
    if (!globalThis.crypto || !globalThis.crypto.subtle) {
      throw new Error('Web Crypto is unavailable here: open the explorer over HTTPS or on localhost');
    }
    return globalThis.crypto.subtle;
  }

  async function sha256(bytes) {
    return new Uint8Array(await subtle().digest('SHA-256', bytes));
  }

  /** Ed25519 (RFC 8032) verification; false when the signature does not hold. */
  async function ed25519Verify(publicKey, signature, message) {
    if (publicKey.length !== 32) throw new Error('an Ed25519 public key is 32 bytes');
    if (signature.length !== 64) return false;
    let key;
    try {
      key = await subtle().importKey('raw', publicKey, { name: 'Ed25519' }, false, ['verify']);
    } catch (e) {
      if (e && e.name === 'NotSupportedError') throw new Error('this browser has no Ed25519 in Web Crypto');
      throw new Error(`the public key was refused: ${e.message}`);
    }
    return subtle().verify({ name: 'Ed25519' }, key, signature, message);
  }

  // ---- RFC 6962 / 9162 Merkle tree -------------------------------------

  const leafHash = (record) => sha256(concat(new Uint8Array([0]), record));
  const nodeHash = (left, right) => sha256(concat(new Uint8Array([1]), left, right));

  /** How many hashes the RFC 9162 §2.1.3.2 inclusion proof of `index` in `size` has. */
  function inclusionProofLength(index, size) {
    let fn = BigInt(index);
    let sn = BigInt(size) - 1n;
    let length = 0;
    while (sn > 0n) {
      if ((fn & 1n) === 1n || fn === sn) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
      fn >>= 1n;
      sn >>= 1n;
      length++;
    }
    return length;
  }

  /**
   * RFC 9162 §2.1.3.2: the root that `proof` leads to from `leaf` at `index`
   * in a tree of `size` leaves. Throws when the proof's length is not exactly
   * right (a longer proof can still reach the root in some verifiers).
   */
  async function rootFromInclusionProof(index, size, leaf, proof) {
    const i = BigInt(index);
    const n = BigInt(size);
    if (i < 0n || i >= n) throw new Error(`index ${index} is not below the tree size ${size}`);
    const expected = inclusionProofLength(i, n);
    if (proof.length !== expected) {
      throw new Error(`the proof has ${proof.length} hashes; index ${index} in a tree of ${size} needs ${expected}`);
    }
    let fn = i;
    let sn = n - 1n;
    let r = leaf;
    for (const p of proof) {
      if (p.length !== 32) throw new Error('a proof hash is not 32 bytes');
      if ((fn & 1n) === 1n || fn === sn) {
        r = await nodeHash(p, r);
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      } else {
        r = await nodeHash(r, p);
      }
      fn >>= 1n;
      sn >>= 1n;
    }
    return r;
  }

  async function verifyInclusion(index, size, leaf, proof, root) {
    const computed = await rootFromInclusionProof(index, size, leaf, proof);
    if (!equalBytes(computed, root)) {
      throw new Error(`the proof leads to root ${hexEncode(computed)}, not the checkpoint's ${hexEncode(root)}`);
    }
  }

  // ---- Verifier keys and signed notes (C2SP) ---------------------------

  /**
   * Parses `<name>+<hex key id>+<base64(0x01 || public key)>` and checks that
   * the key id is the one the name and key determine.
   */
  async function parseVerifierKey(text) {
    return parseKey(text, 0x01);
  }

  /**
   * Parses a witness's key, `<name>+<hex key id>+<base64(0x04 || public key)>`
   * (C2SP tlog-cosignature, `cosignature/v1`), checking its key id likewise.
   */
  async function parseCosignerKey(text) {
    return parseKey(text, 0x04);
  }

  async function parseKey(text, type) {
    const line = String(text).trim();
    // The name cannot contain '+'; the base64 key data can.
    const first = line.indexOf('+');
    const second = first < 0 ? -1 : line.indexOf('+', first + 1);
    if (first <= 0 || second < 0) throw new Error('a verifier key is <name>+<key id>+<key>');
    const name = line.slice(0, first);
    const idHex = line.slice(first + 1, second);
    if (/\s/.test(name)) throw new Error('the key name contains white space');
    if (!/^[0-9a-f]{8}$/.test(idHex)) throw new Error('the key id is not 8 lowercase hex digits');
    let data;
    try {
      data = base64Decode(line.slice(second + 1));
    } catch (e) {
      throw new Error(`the key data is not base64: ${e.message}`);
    }
    const typeHex = `0x${type.toString(16).padStart(2, '0')}`;
    if (data.length !== 33 || data[0] !== type) throw new Error(`the key is not an Ed25519 key (${typeHex} || 32 bytes)`);
    const publicKey = data.slice(1);
    const keyId = (await sha256(concat(utf8.encode(name), new Uint8Array([0x0a, type]), publicKey))).slice(0, 4);
    if (hexEncode(keyId) !== idHex) {
      throw new Error(`the key id ${idHex} does not match the key (it is ${hexEncode(keyId)})`);
    }
    return { name, keyId, publicKey, text: line };
  }

  /** Splits a checkpoint note into its body fields; no signature checked. */
  function parseCheckpoint(note) {
    if (typeof note !== 'string') throw new Error('the checkpoint is not text');
    const split = note.indexOf('\n\n');
    if (split < 0) throw new Error('the note has no blank line before its signatures');
    const body = note.slice(0, split + 1);
    const lines = body.split('\n');
    // Three lines and the empty string after the final newline; the spec
    // allows no extension lines.
    if (lines.length !== 4) throw new Error(`the checkpoint body has ${lines.length - 1} lines, not 3`);
    const [origin, sizeText, rootText] = lines;
    if (!/^(0|[1-9][0-9]*)$/.test(sizeText)) throw new Error('the tree size is not a decimal number');
    let root;
    try {
      root = base64Decode(rootText);
    } catch (e) {
      throw new Error(`the root hash is not base64: ${e.message}`);
    }
    if (root.length !== 32) throw new Error('the root hash is not 32 bytes');
    return { origin, size: BigInt(sizeText), root, body, signatures: note.slice(split + 2) };
  }

  /**
   * Opens a signed note with a verifier key (from `parseVerifierKey`):
   * finds the signature line of that key and checks it over the body.
   * Lines of other keys (witness cosignatures) are ignored.
   */
  async function openCheckpoint(note, vkey) {
    const checkpoint = parseCheckpoint(note);
    if (checkpoint.origin !== vkey.name) {
      throw new Error(`the checkpoint's origin "${checkpoint.origin}" is not the key's name "${vkey.name}"`);
    }
    if (!checkpoint.signatures.endsWith('\n')) throw new Error('the note does not end with a newline');
    const lines = checkpoint.signatures.slice(0, -1).split('\n');
    let candidates = 0;
    for (const line of lines) {
      const m = /^\u2014 (\S+) (\S+)$/.exec(line);
      if (!m) throw new Error(`not a signature line: ${JSON.stringify(line)}`);
      if (m[1] !== vkey.name) continue;
      let sig;
      try {
        sig = base64Decode(m[2]);
      } catch {
        continue;
      }
      if (sig.length !== 68 || !equalBytes(sig.slice(0, 4), vkey.keyId)) continue;
      candidates++;
      if (await ed25519Verify(vkey.publicKey, sig.slice(4), utf8.encode(checkpoint.body))) {
        return { origin: checkpoint.origin, size: checkpoint.size, root: checkpoint.root };
      }
    }
    if (candidates === 0) throw new Error(`no signature by ${vkey.name}+${hexEncode(vkey.keyId)} on the note`);
    throw new Error('the log\'s signature on the checkpoint does not verify');
  }

  // ---- Witness cosignatures (C2SP tlog-cosignature, tlog-policy) --------

  const MAX_TIMESTAMP = (1n << 63n) - 1n;

  /**
   * Checks the cosignature of one witness (a key from `parseCosignerKey`) on
   * a checkpoint note: null when the note carries no line of that key (name
   * and key id), the newest timestamp (POSIX seconds, BigInt) when its lines
   * verify; throws when one is there and does not. The signed message is
   * "cosignature/v1\ntime <T>\n" followed by the checkpoint body.
   */
  async function checkCosignature(note, wkey) {
    const checkpoint = parseCheckpoint(note);
    let newest = null;
    for (const line of checkpoint.signatures.replace(/\n$/, '').split('\n')) {
      const m = /^\u2014 (\S+) (\S+)$/.exec(line);
      if (!m || m[1] !== wkey.name) continue;
      let sig;
      try {
        sig = base64Decode(m[2]);
      } catch {
        continue;
      }
      if (sig.length < 4 || !equalBytes(sig.slice(0, 4), wkey.keyId)) continue;
      if (sig.length !== 4 + 8 + 64) throw new Error(`the cosignature of ${wkey.name} is ${sig.length} bytes, not 76`);
      let time = 0n;
      for (const b of sig.slice(4, 12)) time = (time << 8n) | BigInt(b);
      if (time > MAX_TIMESTAMP) throw new Error(`the cosignature of ${wkey.name} has a timestamp above 2^63 - 1`);
      const message = utf8.encode(`cosignature/v1\ntime ${time}\n${checkpoint.body}`);
      if (!(await ed25519Verify(wkey.publicKey, sig.slice(12), message))) {
        throw new Error(`the cosignature of ${wkey.name} does not verify`);
      }
      if (newest === null || time > newest) newest = time;
    }
    return newest;
  }

  /**
   * Whether the witnesses that cosigned (policy names) satisfy a C2SP
   * tlog-policy quorum. `rules` is policy text whose `group` and `quorum`
   * lines are read (or just the quorum's name); `names` are the policy's
   * witnesses. Returns true or false, or null when the quorum names a group
   * the text does not define (the rule is then not known here).
   */
  function quorumMet(rules, names, cosigned) {
    if (typeof rules !== 'string') return null;
    const groups = new Map();
    let quorum = null;
    const lines = String(rules || '').split('\n');
    for (const raw of lines) {
      const w = raw.trim().split(/[ \t]+/).filter(Boolean);
      if (w.length === 0 || w[0].startsWith('#')) continue;
      if (w[0] === 'group' && w.length >= 4) groups.set(w[1], { k: w[2], members: w.slice(3) });
      else if (w[0] === 'quorum' && w.length === 2) quorum = w[1];
      else if (w.length === 1 && lines.length === 1) quorum = w[0];
    }
    if (quorum === null) return null;
    const met = (name, depth) => {
      if (name === 'none') return true;
      if (names.includes(name)) return cosigned.includes(name);
      const group = groups.get(name);
      if (!group || depth > 32) return null;
      const results = group.members.map((m) => met(m, depth + 1));
      if (results.includes(null)) return null;
      const k = group.k === 'all' ? group.members.length : group.k === 'any' ? 1 : Number(group.k);
      if (!Number.isInteger(k) || k < 1) return null;
      return results.filter(Boolean).length >= k;
    };
    return met(quorum, 0);
  }

  /**
   * Checks every listed witness's cosignature on a note, in this browser:
   * `witnesses` is [{name, vkey}] (policy name, cosigner key text). Returns
   * {cosigners: [{name, timestamp}], witnessed: true|false|null} (null: the
   * quorum rule is not known here); throws when a cosignature is bad.
   */
  async function checkWitnessed(note, witnesses, quorum) {
    const cosigners = [];
    for (const w of witnesses) {
      const time = await checkCosignature(note, await parseCosignerKey(w.vkey));
      if (time !== null) cosigners.push({ name: w.name, timestamp: time });
    }
    const names = witnesses.map((w) => w.name);
    return { cosigners, witnessed: quorumMet(quorum, names, cosigners.map((c) => c.name)) };
  }
  return {
    utf8,
    hexEncode,
    hexDecode,
    base64Encode,
    base64Decode,
    concat,
    equalBytes,
    str16,
    sha256,
    ed25519Verify,
    leafHash,
    nodeHash,
    inclusionProofLength,
    rootFromInclusionProof,
    verifyInclusion,
    parseVerifierKey,
    parseCosignerKey,
    parseCheckpoint,
    openCheckpoint,
    checkCosignature,
    quorumMet,
    checkWitnessed,
  };
})();
