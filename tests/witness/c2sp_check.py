#!/usr/bin/env python3
"""Check a C2SP checkpoint (signed note) against a C2SP tlog-policy file.

Written from the C2SP specification texts alone (signed-note, tlog-checkpoint,
tlog-cosignature, tlog-policy), without reading the project's own code, so
that the project's tests can check its cosignatures with an implementation
other than the project's own.

Usage: c2sp_check.py --policy POLICY_FILE --note NOTE_FILE [--now UNIX_SECONDS]

Prints one JSON object on stdout:
  {"origin", "size", "root", "log_signature", "cosigned_by", "quorum", "error"}
Exit 0: a policy log signed the note and the quorum is met; 1: otherwise;
2: the policy (or the command line) is malformed.

Choices where the specs leave room (see the report of the branch):
- A signature line that matches a known key (name AND key id) but does not
  verify makes the whole note rejected (signed-note: clients SHOULD reject);
  such a cosignature never counts towards the quorum.
- With --now, a cosignature timestamp later than now + 60 s counts as a
  failed signature (tlog-cosignature: verifiers MAY reject future ones).
- A missing newline at the very end of the policy file is tolerated.
"""
import argparse
import base64
import binascii
import hashlib
import json
import re
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TYPE_ED25519 = 0x01  # signed-note: Ed25519 note signatures (logs)
TYPE_COSIG_V1 = 0x04  # tlog-cosignature: timestamped Ed25519 cosignatures
MAX_TIMESTAMP = 2**63 - 1
MAX_SIGNATURES = 256  # signed-note: must accept at least 16
FUTURE_SLACK = 60


class PolicyError(Exception):
    pass


class NoteError(Exception):
    pass


def b64decode_strict(s):
    """Standard base64 (RFC 4648 section 4), padded, canonical; None if not."""
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return None
    if base64.b64encode(raw) != (s.encode() if isinstance(s, str) else s):
        return None
    return raw


def key_id(name, type_byte, pub):
    return hashlib.sha256(name + b"\n" + bytes([type_byte]) + pub).digest()[:4]


def valid_key_name(name):
    """signed-note: non-empty, no Unicode spaces, no '+'."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return text != "" and "+" not in text and not any(c.isspace() for c in text)


def parse_vkey(vkey, want_type):
    """<name>+<8 hex key id>+<base64(type || public key)> -> (name, id, pub)."""
    parts = vkey.split(b"+", 2)  # base64 may itself contain '+'
    if len(parts) != 3:
        raise PolicyError("vkey must be <name>+<key id>+<base64 key>")
    name, hex_id, b64 = parts
    if not valid_key_name(name):
        raise PolicyError("vkey has an invalid key name")
    if not re.fullmatch(rb"[0-9a-fA-F]{8}", hex_id):
        raise PolicyError("vkey key id must be 8 hex digits")
    raw = b64decode_strict(b64)
    if raw is None or len(raw) < 1:
        raise PolicyError("vkey key is not valid base64")
    if raw[0] != want_type:
        raise PolicyError(f"vkey has signature type 0x{raw[0]:02x}, want 0x{want_type:02x}")
    pub = raw[1:]
    if len(pub) != 32:
        raise PolicyError("vkey Ed25519 public key must be 32 bytes")
    kid = bytes.fromhex(hex_id.decode())
    if kid != key_id(name, want_type, pub):
        raise PolicyError("vkey key id does not match its name and key")
    return name, kid, pub


def parse_policy(data):
    """Returns {"logs": [...], "witnesses": {name: ...}, "groups": {...}, "quorum": name}."""
    for i, b in enumerate(data):
        if not (b in (0x09, 0x0A) or 0x20 <= b <= 0x7E or b >= 0x80):
            raise PolicyError(f"byte 0x{b:02x} at offset {i} is not allowed")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    logs, log_keys = [], set()
    witnesses, witness_keys, groups = {}, set(), {}
    quorum = None

    def new_name(name, lineno):
        if name == b"none":
            raise PolicyError(f"line {lineno}: the name 'none' is reserved")
        if name in witnesses or name in groups:
            raise PolicyError(f"line {lineno}: name {name!r} defined twice")

    for lineno, line in enumerate(lines, 1):
        tok = re.split(rb"[ \t]+", line.strip(b" \t"))
        if tok == [b""] or tok[0].startswith(b"#"):
            continue
        kw, args = tok[0], tok[1:]
        try:
            if kw == b"log":
                if len(args) not in (1, 2):
                    raise PolicyError("want: log <vkey> [<url>]")
                name, kid, pub = parse_vkey(args[0], TYPE_ED25519)
                if pub in log_keys:
                    raise PolicyError("duplicate log public key")
                log_keys.add(pub)
                logs.append({"name": name, "id": kid, "pub": pub})
            elif kw == b"witness":
                if len(args) not in (2, 3):
                    raise PolicyError("want: witness <name> <vkey> [<url>]")
                new_name(args[0], lineno)
                name, kid, pub = parse_vkey(args[1], TYPE_COSIG_V1)
                if pub in witness_keys:
                    raise PolicyError("duplicate witness public key")
                witness_keys.add(pub)
                witnesses[args[0]] = {"name": name, "id": kid, "pub": pub}
            elif kw == b"group":
                if len(args) < 3:
                    raise PolicyError("want: group <name> all|any|<k> <name>...")
                new_name(args[0], lineno)
                members = args[2:]
                for m in members:
                    if m == b"none":
                        raise PolicyError("'none' cannot be a group member")
                    if m not in witnesses and m not in groups:
                        raise PolicyError(f"member {m!r} is not defined on an earlier line")
                if len(set(members)) != len(members):
                    raise PolicyError("a name is listed twice as a member")
                if args[1] == b"all":
                    k = len(members)
                elif args[1] == b"any":
                    k = 1
                elif re.fullmatch(rb"[0-9]+", args[1]):
                    k = int(args[1])
                    if not 1 <= k <= len(members):
                        raise PolicyError(f"threshold {k} not in 1..{len(members)}")
                else:
                    raise PolicyError("threshold must be all, any or a decimal number")
                groups[args[0]] = {"k": k, "members": members}
            elif kw == b"quorum":
                if len(args) != 1:
                    raise PolicyError("want: quorum <name>")
                if quorum is not None:
                    raise PolicyError("more than one quorum line")
                if args[0] != b"none" and args[0] not in witnesses and args[0] not in groups:
                    raise PolicyError(f"quorum {args[0]!r} is not defined on an earlier line")
                quorum = args[0]
            else:
                raise PolicyError(f"unknown keyword {kw!r}")
        except PolicyError as e:
            raise PolicyError(f"line {lineno}: {e}") from None
    if quorum is None:
        raise PolicyError("no quorum line")
    return {"logs": logs, "witnesses": witnesses, "groups": groups, "quorum": quorum}


def parse_note(data):
    """Returns (text, [(key name, signature bytes)]) per signed-note."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("note is not valid UTF-8") from None
    if any(b < 0x20 and b != 0x0A for b in data):
        raise NoteError("note contains a control character other than newline")
    if not data.endswith(b"\n"):
        raise NoteError("note does not end with a newline")
    sep = data.rfind(b"\n\n")
    if sep < 0:
        raise NoteError("note has no blank line before its signatures")
    text, sig_block = data[: sep + 1], data[sep + 2 :]
    if sig_block == b"":
        raise NoteError("note has no signature lines")
    sig_lines = sig_block[:-1].split(b"\n")
    if len(sig_lines) > MAX_SIGNATURES:
        raise NoteError("too many signature lines")
    sigs = []
    for line in sig_lines:
        prefix = "\u2014 ".encode()
        parts = line[len(prefix) :].split(b" ")
        if not line.startswith(prefix) or len(parts) != 2:
            raise NoteError(f"malformed signature line {line!r}")
        name, raw = parts[0], b64decode_strict(parts[1])
        if not valid_key_name(name) or raw is None or len(raw) < 5:
            raise NoteError(f"malformed signature line {line!r}")
        sigs.append((name, raw))
    return text, sigs


def parse_checkpoint(text):
    """Returns (origin, size, root base64) per tlog-checkpoint."""
    lines = text[:-1].split(b"\n")
    if len(lines) < 3 or any(line == b"" for line in lines):
        raise NoteError("checkpoint needs at least three non-empty lines")
    origin, size, root = lines[0], lines[1], lines[2]
    if not re.fullmatch(rb"0|[1-9][0-9]*", size) or int(size) >= 2**64:
        raise NoteError("checkpoint tree size is not a canonical decimal u64")
    root_raw = b64decode_strict(root)
    if root_raw is None or len(root_raw) != 32:
        raise NoteError("checkpoint root hash is not base64 of 32 bytes")
    return origin.decode(), int(size), root.decode()


def ed25519_ok(pub, sig, msg):
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
        return True
    except InvalidSignature:
        return False


def check(policy, note, now=None):
    out = {"origin": None, "size": None, "root": None, "log_signature": False,
           "cosigned_by": [], "quorum": False, "error": None}
    try:
        text, sigs = parse_note(note)
        out["origin"], out["size"], out["root"] = parse_checkpoint(text)
    except NoteError as e:
        out["error"] = str(e)
        return out
    failures = []
    cosigned = set()
    for name, raw in sigs:
        kid, body = raw[:4], raw[4:]
        for log in policy["logs"]:
            if (log["name"], log["id"]) != (name, kid):
                continue
            if len(body) != 64 or not ed25519_ok(log["pub"], body, text):
                failures.append(f"log signature by {name.decode()} does not verify")
            elif name == out["origin"].encode():
                out["log_signature"] = True
        for wname, w in policy["witnesses"].items():
            if (w["name"], w["id"]) != (name, kid):
                continue
            label = f"cosignature by {wname.decode(errors='replace')}"
            if len(body) != 8 + 64:
                failures.append(f"{label} has the wrong length")
                continue
            (ts,) = struct.unpack(">Q", body[:8])
            msg = b"cosignature/v1\ntime %d\n" % ts + text
            if ts > MAX_TIMESTAMP:
                failures.append(f"{label} has a timestamp above 2^63-1")
            elif now is not None and ts > now + FUTURE_SLACK:
                failures.append(f"{label} has a timestamp in the future")
            elif not ed25519_ok(w["pub"], body[8:], msg):
                failures.append(f"{label} does not verify")
            elif wname not in cosigned:
                cosigned.add(wname)
                out["cosigned_by"].append({"witness": wname.decode(errors="replace"),
                                           "key_name": name.decode(), "timestamp": ts})
    out["quorum"] = witnessed(policy, policy["quorum"], cosigned)
    if failures:
        out["error"] = "; ".join(failures)
    elif not out["log_signature"]:
        out["error"] = "no valid signature by a policy log named after the origin"
    elif not out["quorum"]:
        out["error"] = "quorum not met"
    return out


def witnessed(policy, name, cosigned):
    """tlog-policy: a group witnesses if at least k of its members witness."""
    if name == b"none":
        return True
    if name in policy["witnesses"]:
        return name in cosigned
    group = policy["groups"][name]
    hits = sum(witnessed(policy, m, cosigned) for m in group["members"])
    return hits >= group["k"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--note", required=True)
    ap.add_argument("--now", type=int, default=None, help="UNIX seconds")
    args = ap.parse_args(argv)
    try:
        with open(args.policy, "rb") as f:
            policy = parse_policy(f.read())
        with open(args.note, "rb") as f:
            note = f.read()
    except (OSError, PolicyError) as e:
        msg = f"policy: {e}" if isinstance(e, PolicyError) else str(e)
        print(f"c2sp_check: {msg}", file=sys.stderr)
        print(json.dumps({"origin": None, "size": None, "root": None,
                          "log_signature": False, "cosigned_by": [],
                          "quorum": False, "error": msg}))
        return 2
    out = check(policy, note, args.now)
    print(json.dumps(out))
    return 0 if out["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
