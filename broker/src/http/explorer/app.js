// sealmq log explorer.
//
// Two parts in one file, because the broker serves exactly one script:
//
//  1. `SealmqVerify`: pure functions (bytes in, answers out; no DOM, no
//     fetch) that decode records and check checkpoints, inclusion proofs
//     and MQS1 signatures with Web Crypto. They follow ../shared/spec/log.md
//     and mqs1.md and are exercised against the spec's vectors by the
//     browser test, so the page checks proofs itself instead of trusting
//     the broker's word.
//  2. The page: fetches the JSON API of the same listener and renders it.
//     Everything the broker returns is put in the DOM with textContent,
//     never as HTML: topics, device ids and payloads are attacker data.

'use strict';

const SealmqVerify = (() => {
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

  // ---- Records (spec/log.md) -------------------------------------------

  /** Reads big-endian fields from a byte array, refusing to read past its end. */
  class Reader {
    constructor(bytes) {
      this.bytes = bytes;
      this.at = 0;
    }
    take(n) {
      if (this.at + n > this.bytes.length) throw new Error('the record is truncated');
      const out = this.bytes.slice(this.at, this.at + n);
      this.at += n;
      return out;
    }
    u8() {
      return this.take(1)[0];
    }
    u16() {
      const b = this.take(2);
      return (b[0] << 8) | b[1];
    }
    u32() {
      const b = this.take(4);
      return ((b[0] << 24) >>> 0) + (b[1] << 16) + (b[2] << 8) + b[3];
    }
    u64() {
      let v = 0n;
      for (const b of this.take(8)) v = (v << 8n) | BigInt(b);
      return v;
    }
    str16() {
      const bytes = this.take(this.u16());
      try {
        return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
      } catch {
        throw new Error('a string field is not UTF-8');
      }
    }
    end() {
      if (this.at !== this.bytes.length) throw new Error(`${this.bytes.length - this.at} bytes after the record`);
    }
  }

  /** The 90-byte MQS1 signature block's fields. */
  function decodeSignatureBlock(sb) {
    if (sb.length !== 90) throw new Error('an MQS1 signature block is 90 bytes');
    const r = new Reader(sb);
    return { bytes: sb, ver: r.u8(), flags: r.u8(), kid: r.take(8), ctr: r.u64(), tsMs: r.u64(), sig: r.take(64) };
  }

  const REGISTRY_ACTIONS = { 1: 'key_added', 2: 'key_revoked', 3: 'policy_set' };

  /** Decodes a kind 1 (publish) or kind 2 (registry) record. */
  function decodeRecord(bytes) {
    const r = new Reader(bytes);
    const version = r.u8();
    if (version !== 1) throw new Error(`unknown record version ${version}`);
    const kind = r.u8();
    if (kind === 1) {
      const rec = {
        kind: 'publish',
        receivedMs: r.u64(),
        deviceId: r.str16(),
        topic: r.str16(),
        qos: r.u8(),
        retain: r.u8(),
        payloadLen: r.u32(),
        payloadSha256: r.take(32),
        auth: r.u8(),
        sb: null,
      };
      if (rec.qos > 2) throw new Error(`QoS ${rec.qos} is not 0, 1 or 2`);
      if (rec.retain > 1) throw new Error('retain is not 0 or 1');
      rec.retain = rec.retain === 1;
      if (rec.auth === 1) rec.sb = decodeSignatureBlock(r.take(90));
      else if (rec.auth !== 0) throw new Error(`unknown auth ${rec.auth}`);
      r.end();
      return rec;
    }
    if (kind === 2) {
      const rec = { kind: 'registry', atMs: r.u64(), action: REGISTRY_ACTIONS[r.u8()], deviceId: r.str16() };
      if (rec.action === 'key_added') rec.publicKey = r.take(32);
      else if (rec.action === 'key_revoked') rec.kid = r.take(8);
      else if (rec.action === 'policy_set') {
        const p = r.u8();
        if (p > 1) throw new Error(`unknown policy ${p}`);
        rec.policy = p === 1 ? 'signed' : 'legacy';
      } else throw new Error('unknown registry action');
      r.end();
      return rec;
    }
    throw new Error(`unknown record kind ${kind}`);
  }

  // ---- MQS1 (spec/mqs1.md) ---------------------------------------------

  /** The bytes a device signs. */
  function mqs1Tbs(sb, deviceId, topic, payloadSha256) {
    return concat(utf8.encode('MQS1'), sb.slice(0, 26), str16(deviceId), str16(topic), payloadSha256);
  }

  const mqs1Kid = async (publicKey) => (await sha256(publicKey)).slice(0, 8);

  /**
   * Checks an MQS1 signature block (bytes) as the broker does, minus the
   * replay window: version, reserved flags, retain, kid = this key, signature.
   */
  async function verifyMqs1(publicKey, sbBytes, deviceId, topic, payloadSha256, retain) {
    const sb = decodeSignatureBlock(sbBytes);
    if (sb.ver !== 1) throw new Error(`unknown signature block version ${sb.ver}`);
    if ((sb.flags & 0xfe) !== 0) throw new Error('reserved flag bits are set');
    if (((sb.flags & 1) === 1) !== retain) throw new Error('the signed retain flag differs from the record\'s');
    if (!equalBytes(sb.kid, await mqs1Kid(publicKey))) throw new Error('the signature names another key');
    const tbs = mqs1Tbs(sbBytes, deviceId, topic, payloadSha256);
    if (!(await ed25519Verify(publicKey, sb.sig, tbs))) throw new Error('the device\'s Ed25519 signature does not verify');
  }

  // ---- The whole check of one record -----------------------------------

  // The steps in the order they run; the page lists them with their outcome.
  const STEPS = [
    ['bundle', 'Proof bundle'],
    ['record', 'Record shown = record proven'],
    ['payload', 'Payload matches the record'],
    ['vkey', 'Verifier key'],
    ['checkpoint', 'Checkpoint signature'],
    ['tree-size', 'Tree size'],
    ['inclusion', 'Inclusion proof'],
    ['witnesses', 'Witness cosignatures'],
    ['signature', 'Device signature (MQS1)'],
  ];

  function compareView(view, rec) {
    const differs = (field, shown, proven) => {
      if (shown !== proven) throw new Error(`${field}: the page shows ${JSON.stringify(shown)}, the record has ${JSON.stringify(proven)}`);
    };
    differs('kind', view.kind, rec.kind);
    differs('device_id', view.device_id, rec.deviceId);
    if (rec.kind === 'publish') {
      differs('received_ms', String(view.received_ms), String(rec.receivedMs));
      differs('topic', view.topic, rec.topic);
      differs('qos', view.qos, rec.qos);
      differs('retain', view.retain, rec.retain);
      differs('payload_len', view.payload_len, rec.payloadLen);
      differs('payload_sha256', view.payload_sha256, hexEncode(rec.payloadSha256));
      differs('auth', view.auth, rec.sb ? 'mqs1' : 'unsigned');
      if (rec.sb) {
        const m = view.mqs1 || {};
        differs('mqs1.kid', m.kid, hexEncode(rec.sb.kid));
        differs('mqs1.ctr', String(m.ctr), String(rec.sb.ctr));
        differs('mqs1.ts_ms', String(m.ts_ms), String(rec.sb.tsMs));
        differs('mqs1.sig', m.sig, hexEncode(rec.sb.sig));
      }
    } else {
      differs('at_ms', String(view.at_ms), String(rec.atMs));
      differs('action', view.action, rec.action);
      if (rec.publicKey) differs('public_key', view.public_key, hexEncode(rec.publicKey));
      if (rec.kid) differs('kid', view.kid, hexEncode(rec.kid));
      if (rec.policy) differs('policy', view.policy, rec.policy);
    }
  }

  /**
   * Checks one record end to end, with nothing but its inputs:
   *  - `bundle`: the sealmq-proof/v1 bundle (parsed JSON);
   *  - `vkey`: the verifier key text the user trusts;
   *  - `index`: the record index that was asked for;
   *  - `view` (optional): the record JSON the page shows, which must be
   *    what the proof proves;
   *  - `payload` (optional Uint8Array): the stored payload shown;
   *  - `devices` (optional): the /v1/devices list, for MQS1 keys;
   *  - `witnesses` (optional): {quorum, list: [{name, vkey}], claimed} from
   *    /v1/witnesses, to check the checkpoint's cosignatures; `claimed` is
   *    the broker's word on whether this checkpoint meets its quorum, used
   *    only when the quorum rule is not known here.
   * Returns {ok, failedStep, witnessed: true|false|null, steps: [{id, label,
   * status: ok|failed|skipped|unwitnessed|not-run, detail}]}; the first
   * failure stops the run. A checkpoint without the witnesses' quorum is not
   * a failure (the record is in the log the key signed) but says so.
   */
  async function verifyRecord({ bundle, vkey, index, view, payload, devices, witnesses }) {
    const steps = STEPS.map(([id, label]) => ({ id, label, status: 'not-run', detail: '' }));
    const byId = Object.fromEntries(steps.map((s) => [s.id, s]));
    const done = (id, status, detail) => Object.assign(byId[id], { status, detail });
    const ctx = {};
    const run = {
      bundle: () => {
        if (!bundle || bundle.format !== 'sealmq-proof/v1') throw new Error('not a sealmq-proof/v1 bundle');
        if (index !== undefined && bundle.index !== index) throw new Error(`the bundle is for record ${bundle.index}, not ${index}`);
        if (!Number.isSafeInteger(bundle.index) || bundle.index < 0) throw new Error('bad index');
        if (!Number.isSafeInteger(bundle.tree_size) || bundle.tree_size < 1) throw new Error('bad tree_size');
        if (!Array.isArray(bundle.inclusion)) throw new Error('no inclusion proof');
        ctx.proof = bundle.inclusion.map((h, i) => {
          const bytes = base64Decode(h);
          if (bytes.length !== 32) throw new Error(`inclusion hash ${i} is not 32 bytes`);
          return bytes;
        });
        ctx.recordBytes = base64Decode(bundle.record);
        ctx.record = decodeRecord(ctx.recordBytes);
        return `record ${bundle.index}, ${ctx.proof.length} proof hashes, tree size ${bundle.tree_size}`;
      },
      record: async () => {
        if (!view) return ['skipped', 'no record view to compare'];
        if (!equalBytes(base64Decode(view.record), ctx.recordBytes)) throw new Error('the record bytes differ from the proof\'s');
        compareView(view, ctx.record);
        if (ctx.record.publicKey && view.kid !== undefined && view.kid !== hexEncode(await mqs1Kid(ctx.record.publicKey))) {
          throw new Error('kid: the page shows a key id that is not the added key\'s');
        }
        return 'every field shown is in the proven record';
      },
      payload: async () => {
        if (ctx.record.kind !== 'publish') return ['skipped', 'registry record: no payload'];
        if (!payload) return ['skipped', 'the stored payload was deleted; the record keeps its hash'];
        if (payload.length !== ctx.record.payloadLen) throw new Error(`${payload.length} bytes, the record says ${ctx.record.payloadLen}`);
        if (!equalBytes(await sha256(payload), ctx.record.payloadSha256)) throw new Error('SHA-256 of the payload differs from the record\'s');
        return `SHA-256 ${hexEncode(ctx.record.payloadSha256).slice(0, 16)}…`;
      },
      vkey: async () => {
        ctx.vkey = await parseVerifierKey(vkey);
        return `${ctx.vkey.name}, key id ${hexEncode(ctx.vkey.keyId)}`;
      },
      checkpoint: async () => {
        ctx.checkpoint = await openCheckpoint(bundle.checkpoint, ctx.vkey);
        return `signed by ${ctx.vkey.name}: size ${ctx.checkpoint.size}, root ${hexEncode(ctx.checkpoint.root).slice(0, 16)}…`;
      },
      'tree-size': () => {
        if (BigInt(bundle.tree_size) !== ctx.checkpoint.size) {
          throw new Error(`the bundle says ${bundle.tree_size}, the signed checkpoint ${ctx.checkpoint.size}`);
        }
        return `${bundle.tree_size} records`;
      },
      inclusion: async () => {
        const leaf = await leafHash(ctx.recordBytes);
        await verifyInclusion(bundle.index, ctx.checkpoint.size, leaf, ctx.proof, ctx.checkpoint.root);
        return `leaf ${hexEncode(leaf).slice(0, 16)}… reaches the signed root`;
      },
      witnesses: async () => {
        if (!witnesses || !witnesses.list || witnesses.list.length === 0) {
          return ['skipped', 'no witnesses configured: the checkpoint is signed by the log alone'];
        }
        const checked = await checkWitnessed(bundle.checkpoint, witnesses.list, witnesses.quorum);
        const { cosigners } = checked;
        let { witnessed } = checked;
        let rule = 'quorum';
        if (witnessed === null && typeof witnesses.claimed === 'boolean') {
          // The rule's groups are not published: take the broker's verdict,
          // but never for a checkpoint no witness was seen cosigning here.
          witnessed = witnesses.claimed && cosigners.length > 0;
          rule = 'quorum (as the broker evaluates its policy)';
        }
        ctx.witnessed = witnessed;
        const who = cosigners.length ? `cosigned by ${cosigners.map((c) => c.name).join(', ')}` : 'cosigned by no witness';
        if (witnessed === false) return ['unwitnessed', `not witnessed: ${who}; the ${rule} is not met`];
        if (witnessed === null) return ['ok', `${who} (each checked here); the quorum rule is not known here`];
        return `witnessed: ${who} (each checked here), ${rule} met`;
      },
      signature: async () => {
        const rec = ctx.record;
        if (rec.kind !== 'publish') return ['skipped', 'registry record: logged by the broker, not signed by a device'];
        if (!rec.sb) return ['skipped', 'unsigned (legacy) publish: nothing to check'];
        const device = (devices || []).find((d) => d.id === rec.deviceId);
        if (!device) throw new Error(`device ${rec.deviceId} is not in the registry`);
        const kidHex = hexEncode(rec.sb.kid);
        // The key's kid is recomputed from the key below; the registry's own
        // kid field only picks the candidate.
        const key = (device.keys || []).find((k) => k.kid === kidHex);
        if (!key) throw new Error(`device ${rec.deviceId} has no key ${kidHex}`);
        await verifyMqs1(hexDecode(key.public_key), rec.sb.bytes, rec.deviceId, rec.topic, rec.payloadSha256, rec.retain);
        const revoked = key.revoked_ms ? ` (key revoked since ${new Date(key.revoked_ms).toISOString()})` : '';
        return `signed by ${rec.deviceId} with key ${kidHex}, counter ${rec.sb.ctr}${revoked}`;
      },
    };
    for (const step of steps) {
      try {
        const result = await run[step.id]();
        const [status, detail] = Array.isArray(result) ? result : ['ok', result];
        done(step.id, status, detail);
      } catch (e) {
        done(step.id, 'failed', e.message || String(e));
        return { ok: false, failedStep: step.id, witnessed: ctx.witnessed ?? null, steps };
      }
    }
    return { ok: true, failedStep: null, witnessed: ctx.witnessed ?? null, steps };
  }

  return {
    STEPS,
    hexEncode,
    hexDecode,
    base64Encode,
    base64Decode,
    sha256,
    ed25519Verify,
    leafHash,
    nodeHash,
    inclusionProofLength,
    rootFromInclusionProof,
    verifyInclusion,
    parseVerifierKey,
    parseCosignerKey,
    checkCosignature,
    quorumMet,
    checkWitnessed,
    parseCheckpoint,
    openCheckpoint,
    decodeRecord,
    decodeSignatureBlock,
    mqs1Tbs,
    mqs1Kid,
    verifyMqs1,
    verifyRecord,
  };
})();

// ===========================================================================
// The page
// ===========================================================================

const Explorer = (() => {
  const V = SealmqVerify;
  const BLOCKS_SHOWN = 20;
  const POLL_MS = 3000;
  const WITNESS_POLL_MS = 2000;
  const PAGE_SIZE = 25;
  const PINNED_KEY = 'sealmq.explorer.pinnedVkey';

  const state = {
    servedVkey: null,
    pinnedVkey: localStorage.getItem(PINNED_KEY),
    checkpointSize: -1,
    blocks: new Map(), // height -> block
    latestHeight: null,
    source: null,
    pollTimer: null,
    search: { params: null, cursors: [], next: null },
    searchSeq: 0,
    record: null, // {view, payload}
    recordSeq: 0,
    verifying: 0,
    witnesses: null, // GET /v1/witnesses, null: none configured (404) or not loaded
    witnessedNote: null, // GET /v1/checkpoint/witnessed
  };

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

  // ---- Checkpoint and key ----------------------------------------------

  function trustedVkey() {
    return state.pinnedVkey || state.servedVkey;
  }

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
          openRecord(b.first_index);
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

  // ---- Witnesses -------------------------------------------------------

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
          el('td', {}, el('span', { class: 'mono' }, r.device_id)),
          el('td', {}, r.kind === 'publish' ? el('span', { class: 'mono topic' }, r.topic) : el('span', { class: 'muted' }, `registry: ${r.action.replace('_', ' ')}`)),
          el('td', {}, r.kind === 'publish'
            ? el('span', { class: `tag ${r.auth === 'mqs1' ? 'signed' : 'unsigned'}` }, r.auth === 'mqs1' ? 'signed' : 'unsigned')
            : el('span', { class: 'tag registry' }, 'registry')),
          el('td', { class: 'num' }, r.kind === 'publish' ? `${number(r.payload_len)} B` : ''),
          el('td', { class: 'num' }, r.block === null ? el('span', { class: 'muted' }, 'pending') : number(r.block)),
        ),
      ),
    );
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
      ['Kind', view.kind === 'publish' ? 'Publish' : 'Registry event'],
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
        ['Authentication', view.auth === 'mqs1' ? el('span', { class: 'tag signed' }, 'MQS1 signed') : el('span', { class: 'tag unsigned' }, 'unsigned (legacy)')],
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
            'The stored payload was deleted (retention or erasure). The record still commits to its SHA-256.'));
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

    fill(
      box,
      el('div', { class: 'card-head' },
        el('h2', { id: 'record-title' }, `Record #${number(view.index)}`),
        el('div', { class: 'row' },
          el('button', { type: 'button', id: 'verify-button', class: 'button primary', onclick: () => verifyShown() }, 'Verify'),
          el('button', { type: 'button', class: 'button secondary', 'aria-label': 'Close', onclick: closeRecord }, 'Close'))),
      el('div', { id: 'verify-result', class: 'verify', dataset: { status: 'idle' }, 'aria-live': 'polite' },
        el('p', { class: 'muted' }, 'Verify checks this record against the log\'s signed checkpoint in your browser: the signature on the checkpoint, the Merkle inclusion proof, and the device\'s signature.')),
      dl(rows),
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
    box.replaceChildren(
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
      // Against the latest witnessed checkpoint when it covers the record.
      const w = state.witnesses;
      const covered = w && w.witnessed_size !== null && w.witnessed_size !== undefined && w.witnessed_size > view.index;
      const bundle = await api(`/v1/proof/${view.index}${covered ? '?witnessed=true' : ''}`);
      const signed = view.kind === 'publish' && view.auth === 'mqs1';
      const devices = signed ? (await api('/v1/devices')).devices : [];
      let claimed = null;
      if (w) {
        let size = null;
        try {
          size = Number(V.parseCheckpoint(bundle.checkpoint).size);
        } catch {
          // verifyRecord reports a malformed checkpoint at its own step.
        }
        const entry = (w.recent || []).find((r) => r.size === size);
        if (size !== null && size === w.witnessed_size) claimed = true;
        else if (entry && typeof entry.quorum === 'boolean') claimed = entry.quorum;
      }
      const witnesses = w
        ? { quorum: w.quorum, claimed, list: (w.witnesses || []).map(({ name, vkey }) => ({ name, vkey })) }
        : null;
      result = await V.verifyRecord({ bundle, vkey: trustedVkey(), index: view.index, view, payload, devices, witnesses });
    } catch (e) {
      const detail = e.status === 404 ? 'the record is not sealed yet; try again after the next block' : e.message;
      result = failEarly('fetch', detail);
    }
    if (run === state.verifying && state.record && state.record.view.index === view.index) renderVerify(result);
  }

  // ---- Start -----------------------------------------------------------

  function route() {
    const m = /^#\/records\/(\d+)$/.exec(location.hash);
    if (m) openRecord(Number(m[1]));
  }

  function init() {
    $('search-form').addEventListener('submit', startSearch);
    $('records-next').addEventListener('click', nextPage);
    $('records-prev').addEventListener('click', prevPage);
    $('goto-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const value = $('goto-index').value.trim();
      if (/^\d+$/.test(value)) openRecord(Number(value));
    });
    window.addEventListener('hashchange', route);
    setInterval(() => {
      for (const row of document.querySelectorAll('#blocks tr[data-height]')) {
        const b = state.blocks.get(Number(row.dataset.height));
        if (b) row.querySelector('.sealed').textContent = `${formatTime(b.sealed_ms)} (${relativeTime(b.sealed_ms)})`;
      }
    }, 5000);
    // Cosignatures arrive after a block is sealed; a slow poll keeps up.
    setInterval(() => loadWitnesses(), WITNESS_POLL_MS);
    Promise.all([loadVkey(), loadCheckpoint(), loadBlocks(), loadWitnesses()]).then(() => {
      document.body.dataset.ready = 'true';
    });
    startLive();
    startSearch();
    route();
  }

  return { init, state, openRecord, loadWitnesses };
})();

window.sealmq = { verify: SealmqVerify, explorer: Explorer };
if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', Explorer.init);
else Explorer.init();
