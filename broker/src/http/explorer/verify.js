// sealmq log explorer: the proof checks, part 2 of 2 (after proofs.js).
//
// `SealmqVerify`: pure functions that decode records (spec/log.md), check
// MQS1 device signatures (spec/mqs1.md), and check one record end to end
// (`verifyRecord`) with the pieces of proofs.js. It re-exports those
// pieces: `window.sealmq.verify` is the whole verification API, which the
// browser test runs against the spec's vectors.

'use strict';

const SealmqVerify = (() => {
  const {
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
  } = SealmqProofs;

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
  const RULE_ACTIONS = { 1: 'installed', 2: 'removed' };
  /** The device id prefix of a rule's actions (spec/rules.md). */
  const RULE_DEVICE_PREFIX = '$rule/';

  /**
   * Decodes a kind 1 (publish; auth 2 is a rule's action, with its cause),
   * kind 2 (registry) or kind 3 (rule installed or removed) record.
   */
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
        cause: null,
      };
      if (rec.qos > 2) throw new Error(`QoS ${rec.qos} is not 0, 1 or 2`);
      if (rec.retain > 1) throw new Error('retain is not 0 or 1');
      rec.retain = rec.retain === 1;
      if (rec.auth === 1) rec.sb = decodeSignatureBlock(r.take(90));
      else if (rec.auth === 2) {
        if (!rec.deviceId.startsWith(RULE_DEVICE_PREFIX)) throw new Error('a rule\'s action whose device id is not $rule/<name>');
        rec.cause = { triggerIndex: r.u64(), ruleHash: r.take(32), ruleName: rec.deviceId.slice(RULE_DEVICE_PREFIX.length) };
      } else if (rec.auth !== 0) throw new Error(`unknown auth ${rec.auth}`);
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
    if (kind === 3) {
      const rec = { kind: 'rule', atMs: r.u64(), action: RULE_ACTIONS[r.u8()], ruleName: r.str16(), document: null };
      if (rec.action === 'installed') rec.document = r.take(r.u32());
      else if (rec.action !== 'removed') throw new Error('unknown rule action');
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
    ['rule', 'Rule that produced it'],
  ];

  async function compareView(view, rec) {
    const differs = (field, shown, proven) => {
      if (shown !== proven) throw new Error(`${field}: the page shows ${JSON.stringify(shown)}, the record has ${JSON.stringify(proven)}`);
    };
    differs('kind', view.kind, rec.kind);
    if (rec.kind === 'rule') {
      differs('at_ms', String(view.at_ms), String(rec.atMs));
      differs('action', view.action, rec.action);
      differs('rule_name', view.rule_name, rec.ruleName);
      if (rec.document) {
        differs('rule_hash', view.rule_hash, hexEncode(await sha256(rec.document)));
        differs('document', view.document, new TextDecoder().decode(rec.document));
      }
      return;
    }
    differs('device_id', view.device_id, rec.deviceId);
    if (rec.kind === 'publish') {
      differs('received_ms', String(view.received_ms), String(rec.receivedMs));
      differs('topic', view.topic, rec.topic);
      differs('qos', view.qos, rec.qos);
      differs('retain', view.retain, rec.retain);
      differs('payload_len', view.payload_len, rec.payloadLen);
      differs('payload_sha256', view.payload_sha256, hexEncode(rec.payloadSha256));
      differs('auth', view.auth, rec.sb ? 'mqs1' : rec.cause ? 'rule' : 'unsigned');
      if (rec.sb) {
        const m = view.mqs1 || {};
        differs('mqs1.kid', m.kid, hexEncode(rec.sb.kid));
        differs('mqs1.ctr', String(m.ctr), String(rec.sb.ctr));
        differs('mqs1.ts_ms', String(m.ts_ms), String(rec.sb.tsMs));
        differs('mqs1.sig', m.sig, hexEncode(rec.sb.sig));
      }
      if (rec.cause) {
        const c = view.cause || {};
        differs('cause.trigger_index', String(c.trigger_index), String(rec.cause.triggerIndex));
        differs('cause.rule_hash', c.rule_hash, hexEncode(rec.cause.ruleHash));
        differs('cause.rule_name', c.rule_name, rec.cause.ruleName);
      } else if (view.cause !== null && view.cause !== undefined) {
        throw new Error('cause: the page shows a cause the record does not have');
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
   * A rule's action (`action`, decoded) against the install record of the
   * rule that ran (`install`: its sealmq-proof/v1 bundle, against the same
   * checkpoint as the action's): installed before the action, under the
   * action's rule name, and its document hashes to the action's rule_hash
   * (spec/rules.md: rule_hash = SHA-256(document bytes)); its inclusion is
   * checked against `checkpoint`, already opened with the trusted key.
   * Returns {index, document (Uint8Array)}.
   */
  async function checkRuleInstall(action, actionIndex, install, checkpoint) {
    if (!install || install.format !== 'sealmq-proof/v1') throw new Error('no proof of the rule\'s install record');
    if (!Number.isSafeInteger(install.index) || install.index >= actionIndex) {
      throw new Error(`the install record #${install.index} does not come before the action #${actionIndex}`);
    }
    if (BigInt(install.tree_size) !== checkpoint.size) {
      throw new Error(`the install's proof is for tree size ${install.tree_size}, the action's for ${checkpoint.size}`);
    }
    const bytes = base64Decode(install.record);
    const rec = decodeRecord(bytes);
    if (rec.kind !== 'rule' || rec.action !== 'installed') throw new Error(`record #${install.index} is not a rule install`);
    if (rec.ruleName !== action.cause.ruleName) {
      throw new Error(`record #${install.index} installs rule ${rec.ruleName}, the action names ${action.cause.ruleName}`);
    }
    if (!equalBytes(await sha256(rec.document), action.cause.ruleHash)) {
      throw new Error(`the document installed at #${install.index} does not hash to the action's rule_hash`);
    }
    const proof = install.inclusion.map(base64Decode);
    await verifyInclusion(install.index, checkpoint.size, await leafHash(bytes), proof, checkpoint.root);
    return { index: install.index, document: rec.document };
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
   *    only when the quorum rule is not known here;
   *  - `rule` (optional): for a rule's action, {install}: the proof bundle
   *    of the install record of the rule that ran, against the action's
   *    tree size (checkRuleInstall).
   * Returns {ok, failedStep, witnessed: true|false|null, ruleDocument (an
   * action's rule document, Uint8Array, once checked), steps: [{id, label,
   * status: ok|failed|skipped|unwitnessed|not-run, detail}]}; the first
   * failure stops the run. A checkpoint without the witnesses' quorum is not
   * a failure (the record is in the log the key signed) but says so.
   */
  async function verifyRecord({ bundle, vkey, index, view, payload, devices, witnesses, rule }) {
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
        await compareView(view, ctx.record);
        if (ctx.record.publicKey && view.kid !== undefined && view.kid !== hexEncode(await mqs1Kid(ctx.record.publicKey))) {
          throw new Error('kid: the page shows a key id that is not the added key\'s');
        }
        return 'every field shown is in the proven record';
      },
      payload: async () => {
        if (ctx.record.kind !== 'publish') return ['skipped', `${ctx.record.kind} record: no payload`];
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
        if (rec.kind !== 'publish') return ['skipped', `${rec.kind} record: logged by the broker, not signed by a device`];
        if (rec.cause) return ['skipped', 'a rule\'s action: logged by the broker, not signed by a device'];
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
      rule: async () => {
        const rec = ctx.record;
        if (!rec.cause) return ['skipped', 'not a rule\'s action'];
        if (rec.cause.triggerIndex >= BigInt(bundle.index)) {
          throw new Error(`the action #${bundle.index} names a trigger after it, #${rec.cause.triggerIndex}`);
        }
        const found = await checkRuleInstall(rec, bundle.index, rule && rule.install, ctx.checkpoint);
        ctx.ruleDocument = found.document;
        return `rule ${rec.cause.ruleName} as installed at #${found.index} (in the log under the same checkpoint): `
          + `its document hashes to the action's rule_hash ${hexEncode(rec.cause.ruleHash).slice(0, 16)}…; `
          + `triggered by #${rec.cause.triggerIndex}`;
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
    return { ok: true, failedStep: null, witnessed: ctx.witnessed ?? null, ruleDocument: ctx.ruleDocument ?? null, steps };
  }

  // The page and the browser tests reach the proof code through this
  // namespace too.
  return {
    ...SealmqProofs,
    STEPS,
    decodeRecord,
    decodeSignatureBlock,
    checkRuleInstall,
    mqs1Tbs,
    mqs1Kid,
    verifyMqs1,
    verifyRecord,
  };
})();
