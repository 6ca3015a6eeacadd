#!/usr/bin/env python3
"""Tests for cel_replay.py, written from spec/rules.md and spec/log.md.

Records are encoded here by hand from the specs (not with the replayer's
helpers) and checked byte for byte against the spec's rules.json; the logs
are SQLite databases with the `records` and `payloads` tables of
migrations/0001_log.sql. Run: python3 -m unittest tests/rules/test_cel_replay.py
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
REPLAYER = HERE / "cel_replay.py"
sys.path.insert(0, str(HERE))
import cel_replay  # noqa: E402  (its main() only: the tests encode records themselves)
VECTORS = ROOT.parent / "shared" / "spec" / "vectors" / "rules.json"

T0 = 1_767_225_600_000  # received_ms of the first trigger


def s16(s: str) -> bytes:
    raw = s.encode()
    return len(raw).to_bytes(2, "big") + raw


def publish(ms: int, device: str, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
            auth: int = 0, tail: bytes = b"") -> bytes:
    """Kind 1 (spec/log.md); `tail` is the signature block or the action's cause."""
    return (bytes([1, 1]) + ms.to_bytes(8, "big") + s16(device) + s16(topic) + bytes([qos, int(retain)])
            + len(payload).to_bytes(4, "big") + hashlib.sha256(payload).digest() + bytes([auth]) + tail)


def action(ms: int, rule: str, document: bytes, topic: str, payload: bytes, trigger: int,
           qos: int = 0, retain: bool = False) -> bytes:
    cause = trigger.to_bytes(8, "big") + hashlib.sha256(document).digest()
    return publish(ms, "$rule/" + rule, topic, payload, qos, retain, 2, cause)


def install(ms: int, name: str, document: bytes) -> bytes:
    return bytes([1, 3]) + ms.to_bytes(8, "big") + b"\x01" + s16(name) + len(document).to_bytes(4, "big") + document


def remove(ms: int, name: str) -> bytes:
    return bytes([1, 3]) + ms.to_bytes(8, "big") + b"\x02" + s16(name)


def key_added(ms: int, device: str) -> bytes:
    return bytes([1, 2]) + ms.to_bytes(8, "big") + b"\x01" + s16(device) + bytes(32)


def rule_doc(name: str, on: str, when: str, topic: str, payload: str, qos: int = 0, retain: bool = False) -> bytes:
    return (f'name = "{name}"\non = "{on}"\nwhen = {json.dumps(when)}\n[publish]\n'
            f'topic = "{topic}"\npayload = {json.dumps(payload)}\nqos = {qos}\n'
            f'retain = {str(retain).lower()}\n').encode()


def schema() -> str:
    """CREATE TABLE records and payloads, as migrations/0001_log.sql has them."""
    sql = (ROOT / "migrations" / "0001_log.sql").read_text()
    tables = re.findall(r"CREATE TABLE (?:records|payloads) \(.*?\n\);", sql, re.S)
    assert len(tables) == 2, "migrations/0001_log.sql no longer defines records and payloads"
    return "\n".join(tables)


class Log:
    """A list of (record, payload) rows, written to a log.db on demand."""

    def __init__(self) -> None:
        self.rows: list[tuple[bytes, Optional[bytes]]] = []

    def add(self, record: bytes, payload: Optional[bytes] = None) -> int:
        self.rows.append((record, payload))
        return len(self.rows) - 1

    def pub(self, topic: str, payload: bytes, device: str = "dev-1", retain: bool = False,
            signed: bool = False, ms: Optional[int] = None) -> int:
        tail = bytes(90) if signed else b""
        ms = T0 + len(self.rows) if ms is None else ms
        return self.add(publish(ms, device, topic, payload, 1, retain, 1 if signed else 0, tail), payload)

    def act(self, trigger: int, name: str, document: bytes, topic: str, payload: bytes,
            qos: int = 0, retain: bool = False) -> int:
        ms = int.from_bytes(self.rows[trigger][0][2:10], "big")
        return self.add(action(ms, name, document, topic, payload, trigger, qos, retain), payload)

    def write(self, path: str, skip: tuple[int, ...] = (), erase: tuple[int, ...] = ()) -> None:
        db = sqlite3.connect(path)
        db.executescript(schema())
        for idx, (record, payload) in enumerate(self.rows):
            if idx in skip:
                continue
            leaf = hashlib.sha256(b"\x00" + record).digest()
            db.execute("INSERT INTO records (idx, leaf, body) VALUES (?, ?, ?)", (idx, leaf, record))
            if payload is not None and idx not in erase:
                db.execute("INSERT INTO payloads (idx, data) VALUES (?, ?)", (idx, payload))
        db.commit()
        db.close()


class ReplayTest(unittest.TestCase):
    v: dict[str, Any]  # rules.json
    doc: bytes  # its rule document

    @classmethod
    def setUpClass(cls) -> None:
        cls.v = json.loads(VECTORS.read_text())
        cls.doc = cls.v["document"].encode()

    def replay(self, log: Log, **write: Any) -> tuple[int, dict[str, Any]]:
        # In-process (importing cel-python once), through main() as the CLI is.
        with tempfile.TemporaryDirectory() as d:
            log.write(os.path.join(d, "log.db"), **write)
            with contextlib.redirect_stdout(io.StringIO()) as out:
                rc = cel_replay.main([d])
        return rc, json.loads(out.getvalue())

    def assert_holds(self, log: Log, **write: Any) -> dict[str, Any]:
        rc, out = self.replay(log, **write)
        self.assertEqual((rc, out["ok"], out["failure"]), (0, True, None), out)
        return out

    def assert_fails_at(self, log: Log, index: int, why: str, **write: Any) -> dict[str, Any]:
        rc, out = self.replay(log, **write)
        self.assertEqual(rc, 1, out)
        self.assertFalse(out["ok"])
        self.assertEqual(out["failure"]["index"], index, out)
        self.assertIn(why, out["failure"]["why"])
        return out

    # --- the spec's vectors ---------------------------------------------------

    def test_encoder_reproduces_vectors(self) -> None:
        v = self.v
        self.assertEqual(hashlib.sha256(self.doc).hexdigest(), v["rule_hash"])
        self.assertEqual(install(0x19B76D92160, "irrigate-bed", self.doc).hex(), v["install_record"])
        self.assertEqual(remove(0x19B76DC2EA0, "irrigate-bed").hex(), v["remove_record"])
        trigger = publish(0x19B76DAA800, "sensor-7", "farm/bed3/moisture", v["trigger_payload"].encode(), 1)
        self.assertEqual(trigger.hex(), v["trigger_record"])
        act = action(0x19B76DAA800, "irrigate-bed", self.doc, "farm/bed3/valve", b"open", v["trigger_index"],
                     1, True)
        self.assertEqual(act.hex(), v["action_record"])
        self.assertEqual(hashlib.sha256(b"\x00" + act).hexdigest(), v["action_leaf_hash"])

    def vector_log(self) -> tuple[Log, int, int]:
        """The vectors' log: install at 0, filler, the trigger at 41, its action."""
        v, log = self.v, Log()
        log.add(bytes.fromhex(v["install_record"]))
        log.add(key_added(T0, "sensor-7"))
        while len(log.rows) < v["trigger_index"]:
            log.pub(f"farm/bed{len(log.rows)}/temperature", b'{"moisture": 1.0}')
        t = log.add(bytes.fromhex(v["trigger_record"]), v["trigger_payload"].encode())
        a = log.add(bytes.fromhex(v["action_record"]), v["action_payload"].encode())
        return log, t, a

    def test_vector_trigger_and_action_hold(self) -> None:
        log, t, a = self.vector_log()
        log.add(bytes.fromhex(self.v["remove_record"]))
        out = self.assert_holds(log)
        self.assertEqual((t, a), (41, 42))
        self.assertEqual((out["records"], out["triggers"], out["triggers_evaluated"], out["actions"]), (44, 40, 1, 1))
        self.assertEqual((out["rules_installed"], out["rules_removed"], out["unverifiable"]), (1, 1, []))
        self.assertTrue(out["cel"].startswith("cel-python "))

    # --- what replay must catch -----------------------------------------------

    def test_deleted_action_is_named(self) -> None:
        log, _, a = self.vector_log()
        self.assert_fails_at(log, a, "missing action", skip=(a,))
        log.pub("farm/bed3/temperature", b"20")  # a later record: the gap is in the middle
        self.assert_fails_at(log, a, "missing action", skip=(a,))

    def test_action_without_cause(self) -> None:
        log, t, _ = self.vector_log()
        extra = log.act(t, "irrigate-bed", self.doc, "farm/bed3/valve", b"open", 1, True)
        self.assert_fails_at(log, extra, "without cause")
        # A trigger whose `when` is false causes nothing.
        log, _, _ = self.vector_log()
        wet = log.pub("farm/bed9/moisture", b'{"moisture": 80.0}')
        bad = log.act(wet, "irrigate-bed", self.doc, "farm/bed9/valve", b"open", 1, True)
        self.assert_fails_at(log, bad, "without cause")

    def test_changed_action_payload(self) -> None:
        log, t, a = self.vector_log()
        log.rows[a] = (action(0x19B76DAA800, "irrigate-bed", self.doc, "farm/bed3/valve", b"shut", t, 1, True),
                       b"shut")
        self.assert_fails_at(log, a, "payload")

    def test_changed_trigger_payload(self) -> None:
        # The trigger now says the soil is wet (record hash and payload both
        # changed): its action is no longer due.
        log, t, a = self.vector_log()
        log.rows[t] = (publish(0x19B76DAA800, "sensor-7", "farm/bed3/moisture", b'{"moisture": 71.5}', 1),
                       b'{"moisture": 71.5}')
        self.assert_fails_at(log, a, "without cause")
        # A stored payload that no longer matches its record is caught too.
        log, t, _ = self.vector_log()
        log.rows[t] = (log.rows[t][0], b'{"moisture": 71.5}')
        self.assert_fails_at(log, t, "payload_sha256")

    def test_rule_document_changed_after_install(self) -> None:
        log, _, a = self.vector_log()
        changed = self.doc.replace(b"30.0", b"35.0")
        log.rows[0] = (install(0x19B76D92160, "irrigate-bed", changed), None)
        self.assert_fails_at(log, a, "rule_hash")

    def test_wrong_order_of_two_rules(self) -> None:
        log = Log()
        d1 = rule_doc("first", "x/#", "true", "out/1", "'a'")
        d2 = rule_doc("second", "x/+", "true", "out/2", "'b'")
        log.add(install(T0, "first", d1))
        log.add(install(T0, "second", d2))
        t = log.pub("x/y", b"")
        log.act(t, "first", d1, "out/1", b"a")
        log.act(t, "second", d2, "out/2", b"b")
        self.assertEqual(self.assert_holds(log)["actions"], 2)
        log.rows[t + 1], log.rows[t + 2] = log.rows[t + 2], log.rows[t + 1]
        self.assert_fails_at(log, t + 1, "'first'")
        # Reinstalling `first` moves it after `second` in the rule order.
        log = Log()
        log.add(install(T0, "first", d1))
        log.add(install(T0, "second", d2))
        log.add(install(T0, "first", d1))
        t = log.pub("x/y", b"")
        log.act(t, "second", d2, "out/2", b"b")
        log.act(t, "first", d1, "out/1", b"a")
        self.assert_holds(log)

    def test_nothing_between_trigger_and_actions(self) -> None:
        log, t, a = self.vector_log()
        log.rows.insert(a, (key_added(T0, "x"), None))
        self.assert_fails_at(log, a, "missing action")

    def test_removal_stops_firing(self) -> None:
        log, _, _ = self.vector_log()
        log.add(bytes.fromhex(self.v["remove_record"]))
        late = log.pub("farm/bed4/moisture", b'{"moisture": 2.0}')
        self.assert_holds(log)
        bad = log.act(late, "irrigate-bed", self.doc, "farm/bed4/valve", b"open", 1, True)
        self.assert_fails_at(log, bad, "without cause")
        # Without the removal, the same trigger's action is due.
        log, _, _ = self.vector_log()
        late = log.pub("farm/bed4/moisture", b'{"moisture": 2.0}')
        self.assert_fails_at(log, late + 1, "missing action")
        log.act(late, "irrigate-bed", self.doc, "farm/bed4/valve", b"open", 1, True)
        self.assert_holds(log)

    def test_actions_do_not_trigger(self) -> None:
        log = Log()
        doc = rule_doc("echo", "a/#", "true", "a/out", "'x'")
        log.add(install(T0, "echo", doc))
        t = log.pub("a/in", b"1")
        a = log.act(t, "echo", doc, "a/out", b"x")
        self.assertEqual(self.assert_holds(log)["triggers"], 1)
        again = log.act(a, "echo", doc, "a/out", b"x")
        self.assert_fails_at(log, again, "without cause")

    def test_retained_is_the_state_before_the_trigger(self) -> None:
        doc = rule_doc("off-to-on", "home/light/state", "retained('home/light/state') != 'on'", "home/log",
                       "'was off: ' + text")
        log = Log()
        log.add(install(T0, "off-to-on", doc))
        # No retained state yet: the trigger itself (retained 'on') is not seen.
        t1 = log.pub("home/light/state", b"on", retain=True)
        log.act(t1, "off-to-on", doc, "home/log", b"was off: on")
        log.pub("home/light/state", b"on", retain=True)  # retained is 'on' before it: no action
        log.pub("home/light/state", b"", retain=True)  # empty retained payload clears the state
        t4 = log.pub("home/light/state", b"off")  # state is none again, so it fires
        log.act(t4, "off-to-on", doc, "home/log", b"was off: off")
        self.assertEqual(self.assert_holds(log)["actions"], 2)
        log.rows.pop()
        self.assert_fails_at(log, t4 + 1, "missing action")

    def test_retained_actions_are_state(self) -> None:
        # The vector's rule opens the valve once: its retained action makes
        # the next dry reading see 'open'.
        log, _, _ = self.vector_log()
        dry = log.pub("farm/bed3/moisture", b'{"moisture": 5.0}')
        self.assert_holds(log)
        log.act(dry, "irrigate-bed", self.doc, "farm/bed3/valve", b"open", 1, True)
        self.assert_fails_at(log, dry + 1, "without cause")

    def test_variables(self) -> None:
        when = ("signed && device == 'dev-1' && levels == ['s', 'dev-1', 't'] && topic == 's/dev-1/t' && "
                "received_ms == 1767225600007 && size(payload) == 8 && text == '{\"n\": 3}' && json.n == 3.0")
        doc = rule_doc("vars", "s/+/t", when, "o/{device}/{2}", "payload", 2, False)
        log = Log()
        log.add(install(T0, "vars", doc))
        while len(log.rows) < 7:
            log.pub("other", b"")
        t = log.pub("s/dev-1/t", b'{"n": 3}', signed=True)
        log.act(t, "vars", doc, "o/dev-1/t", b'{"n": 3}', 2)
        log.pub("s/dev-1/t", b'{"n": 3}')  # unsigned: `when` is false
        self.assert_holds(log)

    def test_no_action_when_evaluation_fails(self) -> None:
        docs = [rule_doc("nofield", "q", "json.missing < 1.0", "o", "'x'"),  # `when` errors: false
                rule_doc("notbool", "q", "'yes'", "o", "'x'"),  # `when` not a bool: false
                rule_doc("payerr", "q", "true", "o", "json.missing"),  # payload errors
                rule_doc("payint", "q", "true", "o", "42"),  # payload neither string nor bytes
                rule_doc("level", "q", "true", "o/{5}", "'x'"),  # {N} out of range
                rule_doc("badtopic", "q", "true", "o/{device}", "'x'"),  # device id holds '+'
                rule_doc("nulljson", "q", "json == null && text == null", "o", "b'\\xff'")]
        log = Log()
        for d in docs:
            log.add(install(T0, d.split(b'"')[1].decode(), d))
        t = log.pub("q", b"\xff{}", device="a+b")
        log.act(t, "nulljson", docs[-1], "o", b"\xff")
        self.assert_holds(log)

    def test_string_conversions_follow_cel(self) -> None:
        # cel-spec's string(): bool as true/false, no overload for maps,
        # lists or null (an error: no action), bytes as UTF-8.
        docs = [rule_doc("bool", "q", "true", "o/1", "string(json.b) + string(1 < 2)"),
                rule_doc("map", "q", "true", "o/2", "string(json)"),
                rule_doc("null", "q", "true", "o/3", "string(json.n)"),
                rule_doc("bytes", "q", "true", "o/4", "string(b'\\xc3\\xa9') + string(7)"),
                # Computed values too, not only literals and variables.
                rule_doc("computed", "q", "true", "o/5", "string(1 + 2) + string(json.h + 0.25) + string(!json.b)")]
        log = Log()
        for d in docs:
            log.add(install(T0, d.split(b'"')[1].decode(), d))
        t = log.pub("q", b'{"b": false, "n": null, "h": 0.5}')
        log.act(t, "bool", docs[0], "o/1", b"falsetrue")
        log.act(t, "bytes", docs[3], "o/4", "\u00e97".encode())
        log.act(t, "computed", docs[4], "o/5", b"30.75true")
        self.assert_holds(log)

    def test_string_of_a_double_is_positional_and_shortest(self) -> None:
        # README: string(double) is the shortest decimal that reads back as
        # the same double, never in exponent form, no trailing ".0".
        doc = rule_doc("num", "q", "true", "o",
                       "string(json.a) + ' ' + string(json.b) + ' ' + string(json.c) + ' ' + string(json.d)"
                       " + ' ' + string(-0.0) + ' ' + string(1.0 / 0.0)")
        log = Log()
        log.add(install(T0, "num", doc))
        t = log.pub("q", b'{"a": 5, "b": 1e21, "c": 1.5e-7, "d": 0.30000000000000004}')
        log.act(t, "num", doc, "o", b"5 1000000000000000000000 0.00000015 0.30000000000000004 -0 inf")
        self.assert_holds(log)

    def test_equality_is_heterogeneous(self) -> None:
        # cel-spec: numbers equal by value across int, uint and double;
        # values of other different types are unequal, not an error.
        docs = [rule_doc("num", "q", "json.n == 3 && 3u == json.n && [1, 2.0] == [1.0, 2] && 3 in [json.n]",
                         "o/1", "'a'"),
                rule_doc("mixed", "q", "!('a' == 1) && json.s != 1 && null != 0 && {'k': 1.0} == {'k': 1}",
                         "o/2", "'b'"),
                rule_doc("unequal", "q", "json.n == 3.5 || json.s == 's '", "o/3", "'c'")]
        log = Log()
        for d in docs:
            log.add(install(T0, d.split(b'"')[1].decode(), d))
        t = log.pub("q", b'{"n": 3, "s": "s"}')
        log.act(t, "num", docs[0], "o/1", b"a")
        log.act(t, "mixed", docs[1], "o/2", b"b")
        self.assert_holds(log)

    def test_unverifiable_when_payload_erased(self) -> None:
        log, t, a = self.vector_log()
        out = self.assert_holds(log, erase=(t,))
        self.assertEqual([u["index"] for u in out["unverifiable"]], [t])
        self.assertEqual((out["actions"], out["actions_unverified"]), (0, 1))
        # Erasing the action's own payload loses nothing: replay rebuilds it.
        self.assertEqual(self.assert_holds(log, erase=(a,))["unverifiable"], [])
        # An action whose rule is not active is still caught after an erased trigger.
        other = rule_doc("other", "zzz", "true", "o", "'x'")
        log.add(action(0x19B76DAA800, "other", other, "o", b"x", t))
        self.assert_fails_at(log, a + 1, "without cause", erase=(t,))

    def test_unverifiable_when_retained_state_erased(self) -> None:
        doc = rule_doc("r", "go", "retained('state') == 'on'", "o", "'x'")
        log = Log()
        s = log.pub("state", b"on", retain=True)
        log.add(install(T0, "r", doc))
        t = log.pub("go", b"")
        log.act(t, "r", doc, "o", b"x")
        self.assertEqual(self.assert_holds(log)["unverifiable"], [])
        out = self.assert_holds(log, erase=(s,))
        self.assertEqual([u["index"] for u in out["unverifiable"]], [t])
        self.assertIn(f"record {s}", out["unverifiable"][0]["why"])

    def test_installed_document_must_parse(self) -> None:
        log = Log()
        log.add(install(T0, "bad", b'name = "bad"\non = "a"\nwhen = "1 +"\n[publish]\ntopic = "b"\npayload = "\'x\'"\n'))
        self.assert_fails_at(log, 0, "invalid")
        log = Log()
        log.add(install(T0, "other-name", rule_doc("bad", "a", "true", "b", "'x'")))
        self.assert_fails_at(log, 0, "invalid")

    def test_command_line(self) -> None:
        log, _, a = self.vector_log()
        with tempfile.TemporaryDirectory() as d:
            db = os.path.join(d, "log.db")
            log.write(db, skip=(a,))
            before = Path(db).read_bytes()
            r = subprocess.run([sys.executable, str(REPLAYER), db], capture_output=True, text=True)
            self.assertEqual((r.returncode, r.stderr), (1, ""))
            self.assertEqual(Path(db).read_bytes(), before)  # opened read-only
            self.assertEqual(sorted(os.listdir(d)), ["log.db"])
            self.assertEqual(json.loads(r.stdout)["failure"]["index"], a)
            r = subprocess.run([sys.executable, str(REPLAYER), os.path.join(d, "nothing")],
                               capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("error", json.loads(r.stdout))


if __name__ == "__main__":
    unittest.main()
