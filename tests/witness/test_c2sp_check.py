#!/usr/bin/env python3
"""Tests for c2sp_check.py, written from the C2SP texts alone.

Keys, checkpoints, log signatures and cosignatures are built here by hand from
signed-note, tlog-checkpoint and tlog-cosignature (not with the checker's
helpers), so that the checker and these tests only agree if both follow the
specs. Run: python3 -m unittest tests/witness/test_c2sp_check.py
"""
import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import c2sp_check  # noqa: E402  (for the external vectors only)

CHECKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c2sp_check.py")
ORIGIN = "example.com/log42"
ROOT = base64.b64encode(hashlib.sha256(b"root").digest()).decode()
T0 = 1_700_000_000


class Key:
    """An Ed25519 key with a note key name and a signature type byte."""

    def __init__(self, name, type_byte):
        self.name, self.type_byte = name, type_byte
        self.sk = Ed25519PrivateKey.generate()
        self.pub = self.sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        h = hashlib.sha256(name.encode() + b"\n" + bytes([type_byte]) + self.pub)
        self.kid = h.digest()[:4]

    def vkey(self):
        b64 = base64.b64encode(bytes([self.type_byte]) + self.pub).decode()
        return f"{self.name}+{self.kid.hex()}+{b64}"


def body(origin=ORIGIN, size=1234, root=ROOT, ext=()):
    return "".join(line + "\n" for line in [origin, str(size), root, *ext]).encode()


def log_line(key, text, kid=None):
    blob = (kid or key.kid) + key.sk.sign(text)
    return f"\u2014 {key.name} {base64.b64encode(blob).decode()}\n"


def cosig_line(key, text, ts=T0, kid=None):
    msg = b"cosignature/v1\n" + f"time {ts}\n".encode() + text
    blob = (kid or key.kid) + struct.pack(">Q", ts) + key.sk.sign(msg)
    return f"\u2014 {key.name} {base64.b64encode(blob).decode()}\n"


def note(text, *lines):
    return text + b"\n" + "".join(lines).encode()


class CheckerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.log = Key(ORIGIN, 0x01)
        cls.w = [Key(f"witness{i}.example/w", 0x04) for i in range(6)]

    def run_checker(self, policy, note_bytes, *extra):
        with tempfile.TemporaryDirectory() as d:
            p, n = os.path.join(d, "policy"), os.path.join(d, "note")
            with open(p, "w" if isinstance(policy, str) else "wb") as f:
                f.write(policy)
            with open(n, "wb") as f:
                f.write(note_bytes)
            r = subprocess.run([sys.executable, CHECKER, "--policy", p, "--note", n, *extra],
                               capture_output=True, text=True)
        return r.returncode, json.loads(r.stdout)

    def policy_2of3(self):
        ws = "".join(f"witness W{i} {self.w[i].vkey()}\n" for i in range(3))
        return f"# test policy\nlog {self.log.vkey()} https://log.example\n\n{ws}" \
               "group G 2 W0 W1 W2\nquorum G\n"

    def test_two_of_three_passes(self):
        t = body()
        rc, out = self.run_checker(self.policy_2of3(), note(
            t, log_line(self.log, t), cosig_line(self.w[0], t), cosig_line(self.w[2], t, T0 + 5)))
        self.assertEqual(rc, 0, out)
        self.assertEqual((out["origin"], out["size"], out["root"]), (ORIGIN, 1234, ROOT))
        self.assertTrue(out["log_signature"])
        self.assertTrue(out["quorum"])
        self.assertIsNone(out["error"])
        self.assertEqual(out["cosigned_by"], [
            {"witness": "W0", "key_name": self.w[0].name, "timestamp": T0},
            {"witness": "W2", "key_name": self.w[2].name, "timestamp": T0 + 5}])

    def test_one_of_three_fails(self):
        t = body()
        rc, out = self.run_checker(self.policy_2of3(), note(
            t, log_line(self.log, t), cosig_line(self.w[1], t)))
        self.assertEqual(rc, 1)
        self.assertTrue(out["log_signature"])
        self.assertFalse(out["quorum"])
        self.assertEqual([c["witness"] for c in out["cosigned_by"]], ["W1"])

    def test_same_witness_twice_counts_once(self):
        t = body()
        rc, out = self.run_checker(self.policy_2of3(), note(
            t, log_line(self.log, t), cosig_line(self.w[1], t), cosig_line(self.w[1], t, T0 + 1)))
        self.assertEqual(rc, 1)
        self.assertFalse(out["quorum"])

    def test_cosignature_over_other_body_fails(self):
        t, other = body(), body(size=1235)
        rc, out = self.run_checker(self.policy_2of3(), note(
            t, log_line(self.log, t), cosig_line(self.w[0], t), cosig_line(self.w[1], other)))
        self.assertEqual(rc, 1)
        self.assertFalse(out["quorum"])
        self.assertEqual([c["witness"] for c in out["cosigned_by"]], ["W0"])
        self.assertIn("W1", out["error"])

    def test_cosignature_with_log_signature_type_fails(self):
        # A plain note signature (no timestamp, no cosignature/v1 header) by a
        # witness key is not a cosignature.
        t = body()
        bad = log_line(self.w[1], t)
        rc, out = self.run_checker(self.policy_2of3(), note(
            t, log_line(self.log, t), cosig_line(self.w[0], t), bad))
        self.assertEqual(rc, 1)
        self.assertFalse(out["quorum"])

    def test_extension_lines_are_cosigned(self):
        t = body(ext=["ext line one", "two"])
        short = body()
        rc, out = self.run_checker(self.policy_2of3(), note(
            t, log_line(self.log, t), cosig_line(self.w[0], t), cosig_line(self.w[1], t)))
        self.assertEqual(rc, 0, out)
        rc, out = self.run_checker(self.policy_2of3(), note(
            t, log_line(self.log, t), cosig_line(self.w[0], t), cosig_line(self.w[1], short)))
        self.assertEqual(rc, 1)

    def test_wrong_key_id_is_ignored(self):
        t = body()
        rc, out = self.run_checker(self.policy_2of3(), note(
            t, log_line(self.log, t), cosig_line(self.w[0], t),
            cosig_line(self.w[1], t, kid=b"\x00\x01\x02\x03"), cosig_line(self.w[2], t)))
        self.assertEqual(rc, 0, out)
        self.assertEqual([c["witness"] for c in out["cosigned_by"]], ["W0", "W2"])
        # With only the mis-identified line left, the quorum is not met, and
        # the line is ignored, not reported as a failed signature.
        rc, out = self.run_checker(self.policy_2of3(), note(
            t, log_line(self.log, t), cosig_line(self.w[0], t),
            cosig_line(self.w[1], t, kid=b"\x00\x01\x02\x03")))
        self.assertEqual((rc, out["quorum"], out["error"]), (1, False, "quorum not met"))

    def test_log_signature_required(self):
        t = body()
        other_log = Key(ORIGIN, 0x01)
        for sig in (log_line(self.log, t, kid=b"\xff" * 4), log_line(other_log, t)):
            rc, out = self.run_checker(self.policy_2of3(), note(
                t, sig, cosig_line(self.w[0], t), cosig_line(self.w[1], t)))
            self.assertEqual(rc, 1)
            self.assertFalse(out["log_signature"])
            self.assertTrue(out["quorum"])

    def test_log_name_must_match_origin(self):
        t = body(origin="example.com/other-log")
        rc, out = self.run_checker(self.policy_2of3(), note(
            t, log_line(self.log, t), cosig_line(self.w[0], t), cosig_line(self.w[1], t)))
        self.assertEqual(rc, 1)
        self.assertFalse(out["log_signature"])

    def nested_policy(self):
        ws = "".join(f"witness W{i} {self.w[i].vkey()}\n" for i in range(6))
        return f"log {self.log.vkey()}\n{ws}group X 2 W0 W1 W2\n" \
               "group Y any W3 W4 W5\ngroup XY all X Y\nquorum XY\n"

    def test_nested_groups(self):
        t = body()
        cases = [((0, 1, 4), True), ((0, 2, 3, 5), True), ((0, 1, 2), False),
                 ((0, 3, 4, 5), False), ((), False)]
        for idx, want in cases:
            lines = [cosig_line(self.w[i], t) for i in idx]
            rc, out = self.run_checker(self.nested_policy(), note(t, log_line(self.log, t), *lines))
            self.assertEqual(out["quorum"], want, idx)
            self.assertEqual(rc, 0 if want else 1, idx)

    def test_quorum_none(self):
        t = body()
        policy = f"log {self.log.vkey()}\nquorum none\n"
        rc, out = self.run_checker(policy, note(t, log_line(self.log, t)))
        self.assertEqual((rc, out["quorum"], out["log_signature"]), (0, True, True))
        rc, out = self.run_checker(policy, note(t, log_line(Key(ORIGIN, 0x01), t)))
        self.assertEqual((rc, out["log_signature"]), (1, False))

    def test_timestamps(self):
        t = body()
        policy = f"log {self.log.vkey()}\nwitness A {self.w[0].vkey()}\nquorum A\n"
        rc, _ = self.run_checker(policy, note(t, log_line(self.log, t), cosig_line(self.w[0], t)),
                                 "--now", str(T0 - 60))
        self.assertEqual(rc, 0)
        rc, out = self.run_checker(policy, note(t, log_line(self.log, t),
                                                cosig_line(self.w[0], t)), "--now", str(T0 - 61))
        self.assertEqual((rc, out["quorum"]), (1, False))
        rc, out = self.run_checker(policy, note(t, log_line(self.log, t),
                                                cosig_line(self.w[0], t, ts=2**63)))
        self.assertEqual((rc, out["quorum"]), (1, False))

    def test_malformed_notes(self):
        policy = f"log {self.log.vkey()}\nquorum none\n"
        for t in (body(size="01"), body(size="-1"), body(root="AAAA"), body(ext=[""]),
                  b"example.com/log42\n1\n", body(origin="bad\tname")):
            rc, out = self.run_checker(policy, note(t, log_line(self.log, t)))
            self.assertEqual(rc, 1, t)
            self.assertIsNotNone(out["error"])
        t = body()
        for bad in (t, t + b"\n", note(t, log_line(self.log, t)).rstrip(b"\n"),
                    note(t, log_line(self.log, t).replace("\u2014", "-"))):
            rc, out = self.run_checker(policy, bad)
            self.assertEqual((rc, out["log_signature"]), (1, False), bad)

    def test_malformed_policies_refused(self):
        log, a, b = self.log.vkey(), self.w[0].vkey(), self.w[1].vkey()
        bad_id = f"{self.w[0].name}+00000000+{a.split('+', 2)[2]}"
        bad_policies = [
            "",  # no quorum
            f"log {log}\n",
            "quorum none\nquorum none\n",
            f"witness A {a}\nquorum B\n",  # undefined
            f"quorum A\nwitness A {a}\n",  # used before defined
            f"witness A {a}\nwitness A {b}\nquorum A\n",  # name twice
            f"witness A {a}\nwitness B {a}\nquorum A\n",  # duplicate witness key
            f"log {log}\nlog {log}\nquorum none\n",  # duplicate log key
            f"witness A {a}\ngroup A any A\nquorum A\n",  # group reuses a name
            f"witness none {a}\nquorum none\n",
            f"witness A {a}\ngroup G any A none\nquorum G\n",
            f"witness A {a}\ngroup G any A A\nquorum G\n",
            f"witness A {a}\nwitness B {b}\ngroup G 0 A B\nquorum G\n",
            f"witness A {a}\nwitness B {b}\ngroup G 3 A B\nquorum G\n",
            f"witness A {a}\nwitness B {b}\ngroup G +1 A B\nquorum G\n",
            f"witness A {a}\ngroup G any\nquorum A\n",  # no members
            f"witness A {a}\ngroup G most A\nquorum G\n",
            f"witness A {bad_id}\nquorum A\n",  # key id mismatch
            f"witness A {log}\nquorum A\n",  # log key type (0x01) as witness
            f"log {a}\nquorum none\n",  # witness key type (0x04) as log
            f"log {log} url extra\nquorum none\n",
            "witness A\nquorum none\n",
            "logs x\nquorum none\n",
            f"log {log}\r\nquorum none\n",  # control character
            "quorum none # trailing comment\n",
        ]
        for policy in bad_policies:
            rc, out = self.run_checker(policy, b"")
            self.assertEqual(rc, 2, policy)
            self.assertTrue(out["error"].startswith("policy:"), out)

    def test_policy_syntax_accepted(self):
        t = body()
        policy = (f"  # comment\n\t\nlog\t{self.log.vkey()}  \n witness  A \t{self.w[0].vkey()} "
                  f"https://w.example/\ngroup G all A\n   quorum G\t\n")
        rc, out = self.run_checker(policy, note(t, log_line(self.log, t), cosig_line(self.w[0], t)))
        self.assertEqual(rc, 0, out)

    def test_external_vectors(self):
        # Published vkeys of other implementations: golang.org/x/mod sumdb/note
        # (PeterNeumann, with its example signed note) and transparency-dev/formats
        # note_cosigv1_test.go (a 0x01 key whose base64 holds a '+', and a 0x04
        # witness key). The key ids in them must match our derivation.
        peter = b"PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        for vkey, t in ((peter, 0x01), (b"TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6", 0x01),
                        (b"remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2", 0x04)):
            c2sp_check.parse_vkey(vkey, t)
        _, kid, pub = c2sp_check.parse_vkey(peter, 0x01)
        text = (b"If you think cryptography is the answer to your problem,\n"
                b"then you don't know what your problem is.\n")
        sig = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
        got_text, sigs = c2sp_check.parse_note(text + f"\n\u2014 PeterNeumann {sig}\n".encode())
        self.assertEqual((got_text, sigs[0][0], sigs[0][1][:4]), (text, b"PeterNeumann", kid))
        self.assertTrue(c2sp_check.ed25519_ok(pub, sigs[0][1][4:], text))
        self.assertFalse(c2sp_check.ed25519_ok(pub, sigs[0][1][4:], text.replace(b"answer", b"Answer")))


if __name__ == "__main__":
    unittest.main()
