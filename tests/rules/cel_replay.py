#!/usr/bin/env python3
"""Replay a sealmq log's rules with a second CEL implementation.

Written from spec/rules.md and spec/log.md alone (and the semantics the
rules contract fixes where the spec is silent), without reading the
project's Rust rules code, so that `sealmq audit replay` can be checked
against an implementation other than its own. CEL is `cel-python` (import
`celpy`), pinned in requirements.txt beside this file.

Usage: cel_replay.py DATA_DIR_OR_LOG_DB

The database is opened read-only. Every record is decoded; kind-3 records
install and remove rules; every publish (triggers and actions) updates the
retained state it implies; each trigger is evaluated against the rules
active at its index, the action records each firing rule implies are
rebuilt byte for byte and must follow the trigger, in rule order, and
nothing else may claim to be an action.

Prints one JSON object on stdout:
  {"ok", "records", "triggers", "triggers_evaluated", "actions", "actions_unverified",
   "rules_installed", "rules_removed", "failure": null | {"index", "why"},
   "unverifiable": [{"index", "why"}], "cel"}
where "triggers" counts every trigger (kind 1, auth 0 or 1), "triggers_evaluated"
those at which some active rule's filter matched, "actions" the actions
rebuilt and found byte for byte, "actions_unverified" those that follow an
unverifiable trigger (checked for their shape only).
Exit 0: every action checked is due and every due action is there (indices
whose needed payloads were erased are listed as unverifiable); 1: the first
failure is named; 2: the database could not be read.

Choices where the texts leave room:
- A trigger at least one active rule's filter matches needs its payload; if
  the payload was erased the trigger is unverifiable, and the actions that
  follow it are checked only for their shape (they name it, a matching
  active rule in rule order, its received_ms). A `retained(t)` call on a
  topic whose retained payload was erased makes the trigger unverifiable too.
- A stored payload is used only after its SHA-256 matches the record's
  payload_sha256; a stored payload that does not is a failure.
- Each record's stored leaf must be SHA-256(0x00 || body); a gap in the
  indices is a missing record.
- A logged install whose document does not parse is a failure at the
  install (the spec says such rules are never logged). `when` defaults to
  true, `qos` to 0 and `retain` to false if absent; unknown keys are ignored.
- Removing a name that is not active changes nothing.
- JSON: strict UTF-8, no NaN/Infinity, no lone surrogates, every number a
  finite double; anything else makes `json` null.
- string() follows cel-spec (see cel_string) rather than cel-python's str();
  string(double) is the shortest decimal that reads back as the same double,
  never in exponent form, with no trailing ".0" (5, 1000000000000000000000,
  0.00000015, -0, NaN, inf), as sealmq's README fixes it.
- ==, != and `in` are cel-spec's heterogeneous equality (see cel_equal):
  numbers compare by value whatever their type (5.0 == 5), values of other
  different types are unequal (not an error), lists and maps element by
  element. cel-python 0.5.0 raises "no such overload" instead.

Where cel 0.15.0 (the broker's) and cel-python 0.5.0 still differ: matches(),
timestamp(), duration() are not in the broker's cel build (its installer
refuses rules that call them), present in cel-python.
"""
from __future__ import annotations

import argparse
import math
import hashlib
import json
import re
import sqlite3
import struct
import sys
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import celpy
from celpy import celtypes
from celpy.evaluation import CELEvalError, CELUnsupportedError

MAX_ACTION_PAYLOAD = 256 * 1024
MAX_TOPIC = 65_535
RULE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class DecodeError(Exception):
    pass


class RuleError(Exception):
    pass


class Unknown(Exception):
    """An evaluation needed a payload that was erased."""


# --- records (spec/log.md, spec/rules.md) -----------------------------------


@dataclass(frozen=True)
class Publish:
    received_ms: int
    device: str
    topic: str
    qos: int
    retain: bool
    payload_len: int
    payload_sha256: bytes
    auth: int
    trigger_index: Optional[int] = None
    rule_hash: Optional[bytes] = None


@dataclass(frozen=True)
class RuleEvent:
    at_ms: int
    action: int  # 1 installed, 2 removed
    name: str
    document: Optional[bytes]


@dataclass(frozen=True)
class RegistryEvent:
    at_ms: int
    action: int
    device: str


Record = Union[Publish, RuleEvent, RegistryEvent]


class Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DecodeError(f"truncated at byte {self.pos} (wanted {n} more)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def str16(self) -> str:
        try:
            return self.take(self.uint(2)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"str16 is not UTF-8: {e}") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{len(self.data) - self.pos} trailing byte(s)")


def decode(body: bytes) -> Record:
    c = Cursor(body)
    if c.uint(1) != 1:
        raise DecodeError("version is not 1")
    kind = c.uint(1)
    if kind == 1:
        received_ms, device, topic = c.uint(8), c.str16(), c.str16()
        qos, retain, payload_len, digest, auth = c.uint(1), c.uint(1), c.uint(4), c.take(32), c.uint(1)
        if qos > 2 or retain > 1:
            raise DecodeError(f"qos {qos} / retain {retain} out of range")
        trigger_index = rule_hash = None
        if auth == 1:
            c.take(90)  # the MQS1 signature block: not needed to replay rules
        elif auth == 2:
            trigger_index, rule_hash = c.uint(8), c.take(32)
        elif auth != 0:
            raise DecodeError(f"unknown auth {auth}")
        c.end()
        return Publish(received_ms, device, topic, qos, bool(retain), payload_len, digest, auth,
                       trigger_index, rule_hash)
    if kind == 2:
        at_ms, action, device = c.uint(8), c.uint(1), c.str16()
        sizes = {1: 32, 2: 8, 3: 1}
        if action not in sizes:
            raise DecodeError(f"unknown registry action {action}")
        c.take(sizes[action])
        c.end()
        return RegistryEvent(at_ms, action, device)
    if kind == 3:
        at_ms, action, name = c.uint(8), c.uint(1), c.str16()
        document = None
        if action == 1:
            document = c.take(c.uint(4))
        elif action != 2:
            raise DecodeError(f"unknown rule action {action}")
        c.end()
        return RuleEvent(at_ms, action, name, document)
    raise DecodeError(f"unknown kind {kind}")


def str16(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def encode_action(trigger: Publish, trigger_index: int, rule: "Rule", topic: str, payload: bytes) -> bytes:
    """The kind-1, auth-2 record a rule's action must be (spec/rules.md)."""
    return (struct.pack(">BBQ", 1, 1, trigger.received_ms) + str16("$rule/" + rule.name) + str16(topic)
            + struct.pack(">BBI", rule.qos, int(rule.retain), len(payload)) + hashlib.sha256(payload).digest()
            + struct.pack(">BQ", 2, trigger_index) + rule.hash)


# --- MQTT topics --------------------------------------------------------------


def valid_filter(f: str) -> bool:
    if not f or "\0" in f or len(f.encode()) > MAX_TOPIC or f.startswith("$"):
        return False
    levels = f.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def valid_topic(t: str) -> bool:
    return (t != "" and not any(c in t for c in "+#\0") and not t.startswith("$")
            and len(t.encode()) <= MAX_TOPIC)


def matches(flt: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 / MQTT 5 §4.7: + one level, # this level and below."""
    if topic.startswith("$") and flt[:1] in ("+", "#"):
        return False
    f, t = flt.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


# --- rules --------------------------------------------------------------------


@dataclass
class Rule:
    name: str
    hash: bytes
    install_index: int
    on: str
    when: celpy.Runner
    payload: celpy.Runner
    topic: list[Union[str, int]]  # literal text, level numbers, and -1 for {device}
    qos: int
    retain: bool


def parse_template(template: str) -> list[Union[str, int]]:
    parts: list[Union[str, int]] = []
    pos = 0
    for m in PLACEHOLDER.finditer(template):
        parts.append(template[pos:m.start()])
        key = m.group(1)
        if key == "device":
            parts.append(-1)
        elif key.isascii() and key.isdigit():
            parts.append(int(key))
        else:
            raise RuleError(f"publish.topic: unknown placeholder {{{key}}}")
        pos = m.end()
    parts.append(template[pos:])
    if any(isinstance(p, str) and ("{" in p or "}" in p) for p in parts):
        raise RuleError("publish.topic: unbalanced brace")
    return [p for p in parts if p != ""]


def cel_string(value: Any) -> celtypes.StringType:
    """CEL's string() (cel-spec langdef: from string, int, uint, double,
    bytes, timestamp, duration; bool as in later cel-spec versions), where
    cel-python 0.5.0 would give Python's str(): "True", "MapType({...})",
    "None". Anything else has no overload: an error."""
    # cel-python's operators may give plain bool, int, float and str.
    if isinstance(value, (celtypes.BoolType, bool)):
        return celtypes.StringType("true" if value else "false")
    if isinstance(value, bytes):
        return celtypes.StringType(bytes(value).decode("utf-8"))  # invalid UTF-8: an error
    if isinstance(value, float):
        return celtypes.StringType(double_text(value))
    if isinstance(value, (str, int, celtypes.TimestampType, celtypes.DurationType)):
        return celtypes.StringType(str(value))  # cel-python's own formatting
    raise TypeError(f"no string() overload for {type(value).__name__}")


def double_text(value: float) -> str:
    """string(double): the shortest decimal that reads back as `value`, in
    positional notation, without a trailing ".0"."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plain_number(value: Any) -> Union[int, float]:
    return float(value) if isinstance(value, float) else int(value)


def cel_equal(a: Any, b: Any) -> bool:
    """cel-spec's heterogeneous equality: numbers by value across int, uint
    and double (NaN equals nothing), lists and maps element by element,
    values of different kinds unequal."""
    if is_number(a) and is_number(b):
        # As plain Python numbers (celtypes refuse mixed comparisons), which
        # compare int and float exactly.
        return plain_number(a) == plain_number(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and bool(a) == bool(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(cel_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        if len(a) != len(b):
            return False
        for key, value in a.items():
            match = [k for k in b if cel_equal(k, key)]
            if len(match) != 1 or not cel_equal(value, b[match[0]]):
                return False
        return True
    if isinstance(a, str) and isinstance(b, str):
        return str(a) == str(b)
    if isinstance(a, bytes) and isinstance(b, bytes):
        return bytes(a) == bytes(b)
    if a is None or b is None:
        return a is None and b is None
    return type(a) is type(b) and bool(a == b)


def cel_eq(a: Any, b: Any) -> celtypes.BoolType:
    return celtypes.BoolType(cel_equal(a, b))


def cel_ne(a: Any, b: Any) -> celtypes.BoolType:
    return celtypes.BoolType(not cel_equal(a, b))


def cel_in(item: Any, container: Any) -> celtypes.BoolType:
    if isinstance(container, (list, dict)):
        return celtypes.BoolType(any(cel_equal(item, element) for element in container))
    raise TypeError(f"no 'in' overload for {type(container).__name__}")


class Engine:
    """The rules' CEL environment, with `retained(t)` bound to the state."""

    def __init__(self, state: "RetainedState") -> None:
        self.env = celpy.Environment()
        self.state = state
        self.functions: dict[str, Any] = {
            "retained": self._retained,
            "string": cel_string,
            "_==_": cel_eq,
            "_!=_": cel_ne,
            "_in_": cel_in,
        }

    def _retained(self, topic: Any) -> celtypes.StringType:
        if not isinstance(topic, str):
            raise TypeError("retained() takes a string")
        return celtypes.StringType(self.state.text(str(topic)))

    def compile(self, field: str, source: Any) -> celpy.Runner:
        if not isinstance(source, str):
            raise RuleError(f"{field} is not a string")
        try:
            return self.env.program(self.env.compile(source), functions=self.functions)
        except Exception as e:  # celpy raises its parser's errors and others
            raise RuleError(f"{field} does not compile: {e}") from None

    def parse(self, document: bytes, name: str, index: int) -> Rule:
        try:
            doc = tomllib.loads(document.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise RuleError(f"document is not UTF-8 TOML: {e}") from None
        if doc.get("name") != name or not RULE_NAME.fullmatch(name):
            raise RuleError(f"document name {doc.get('name')!r} is not the record's valid name {name!r}")
        on, publish = doc.get("on"), doc.get("publish")
        if not isinstance(on, str) or not valid_filter(on):
            raise RuleError(f"on {on!r} is not an allowed topic filter")
        if not isinstance(publish, dict) or not isinstance(publish.get("topic"), str):
            raise RuleError("[publish] with a topic is missing")
        qos, retain = publish.get("qos", 0), publish.get("retain", False)
        if type(qos) is not int or not 0 <= qos <= 2 or type(retain) is not bool:
            raise RuleError(f"publish.qos {qos!r} / retain {retain!r} invalid")
        return Rule(name, hashlib.sha256(document).digest(), index, on,
                    self.compile("when", doc.get("when", "true")),
                    self.compile("publish.payload", publish.get("payload")),
                    parse_template(publish["topic"]), qos, retain)


def json_value(text: Optional[str]) -> Any:
    """The `json` variable: the payload as JSON, numbers as doubles, or null."""
    if text is None:
        return None

    def reject(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    def to_cel(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool):
            return celtypes.BoolType(v)
        if isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError("number out of range")
            return celtypes.DoubleType(v)
        if isinstance(v, str):
            v.encode("utf-8")  # a lone surrogate from a \u escape is not a string
            return celtypes.StringType(v)
        if isinstance(v, list):
            return celtypes.ListType([to_cel(x) for x in v])
        return celtypes.MapType({celtypes.StringType(k.encode("utf-8").decode()): to_cel(x) for k, x in v.items()})

    try:
        return to_cel(json.loads(text, parse_int=float, parse_constant=reject))
    except (ValueError, UnicodeError, RecursionError):
        return None


def activation(trigger: Publish, payload: bytes) -> dict[str, Any]:
    try:
        text: Optional[str] = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "topic": celtypes.StringType(trigger.topic),
        "levels": celtypes.ListType([celtypes.StringType(x) for x in trigger.topic.split("/")]),
        "device": celtypes.StringType(trigger.device),
        "signed": celtypes.BoolType(trigger.auth == 1),
        "received_ms": celtypes.IntType(trigger.received_ms),
        "payload": celtypes.BytesType(payload),
        "text": None if text is None else celtypes.StringType(text),
        "json": json_value(text),
    }


def render(rule: Rule, trigger: Publish) -> Optional[str]:
    levels = trigger.topic.split("/")
    out = []
    for p in rule.topic:
        if isinstance(p, str):
            out.append(p)
        elif p == -1:
            out.append(trigger.device)
        elif p < len(levels):
            out.append(levels[p])
        else:
            return None
    topic = "".join(out)
    return topic if valid_topic(topic) else None


# CEL evaluation errors; any other exception is a fault of this program or of
# cel-python, reported as such rather than taken for a false `when`.
CEL_ERRORS = (CELEvalError, CELUnsupportedError)


def fire(rule: Rule, trigger: Publish, act: dict[str, Any]) -> Optional[tuple[str, bytes]]:
    """The action's (topic, payload) when the rule fires, else None."""
    try:
        ok = rule.when.evaluate(dict(act))
    except CEL_ERRORS:
        return None
    if not isinstance(ok, (celtypes.BoolType, bool)) or not ok:
        return None  # an error value or a non-bool is false
    try:
        value = rule.payload.evaluate(dict(act))
    except CEL_ERRORS:
        return None
    if isinstance(value, bytes):
        payload = bytes(value)
    elif isinstance(value, str):
        try:
            payload = str(value).encode("utf-8")
        except UnicodeEncodeError:
            return None
    else:
        return None
    topic = render(rule, trigger)
    if topic is None or len(payload) > MAX_ACTION_PAYLOAD:
        return None
    return topic, payload


# --- retained state -----------------------------------------------------------


class RetainedState:
    """Retained payload per topic as the log implies it (retain + non-empty
    payload sets, retain + empty clears); topics whose payload was erased are
    unknown, with the index of the record that set them."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.unknown: dict[str, int] = {}
        self.erased_reads: list[tuple[str, int]] = []

    def apply(self, index: int, rec: Publish, payload: Optional[bytes]) -> None:
        if not rec.retain:
            return
        self.values.pop(rec.topic, None)
        self.unknown.pop(rec.topic, None)
        if rec.payload_len == 0:
            return
        if payload is None:
            self.unknown[rec.topic] = index
        else:
            self.values[rec.topic] = payload

    def text(self, topic: str) -> str:
        if topic in self.unknown:
            self.erased_reads.append((topic, self.unknown[topic]))
            raise Unknown(topic)
        try:
            return self.values.get(topic, b"").decode("utf-8")
        except UnicodeDecodeError:
            return ""


# --- the replay ---------------------------------------------------------------


@dataclass
class Due:
    rule: Rule
    record: bytes
    payload: bytes


class Failed(Exception):
    def __init__(self, index: int, why: str) -> None:
        super().__init__(why)
        self.index, self.why = index, why


def describe(rec: Record) -> str:
    if isinstance(rec, Publish):
        what = {0: "an unsigned publish", 1: "a signed publish", 2: "a rule's action"}[rec.auth]
        return f"{what} by {rec.device!r} on {rec.topic!r}"
    if isinstance(rec, RuleEvent):
        return f"rule {rec.name!r} {'installed' if rec.action == 1 else 'removed'}"
    return f"a registry event for {rec.device!r}"


def difference(want: Publish, got: Publish) -> str:
    for field in ("device", "trigger_index", "rule_hash", "received_ms", "topic", "qos", "retain",
                  "payload_len", "payload_sha256"):
        w, g = getattr(want, field), getattr(got, field)
        if w != g:
            fmt = (lambda v: v.hex()) if isinstance(w, bytes) else repr
            return f"{field} is {fmt(g)}, the rule implies {fmt(w)}"
    return "its bytes differ"


class Replay:
    def __init__(self) -> None:
        self.state = RetainedState()
        self.engine = Engine(self.state)
        self.rules: dict[str, Rule] = {}  # in install-index order
        self.by_topic: dict[str, list[Rule]] = {}
        self.due: list[Due] = []
        self.unverified: Optional[tuple[int, Publish, list[Rule]]] = None
        self.counts = {"records": 0, "triggers": 0, "triggers_evaluated": 0, "actions": 0,
                       "actions_unverified": 0, "rules_installed": 0, "rules_removed": 0}
        self.unverifiable: list[dict[str, Any]] = []

    def matching(self, topic: str) -> list[Rule]:
        if topic not in self.by_topic:
            if len(self.by_topic) >= 100_000:  # a log of many distinct topics: stay bounded
                self.by_topic.clear()
            self.by_topic[topic] = [r for r in self.rules.values() if matches(r.on, topic)]
        return self.by_topic[topic]

    def run(self, rows: Iterator[tuple[int, bytes, bytes, Optional[bytes]]]) -> None:
        expected = 0
        for idx, leaf, body, data in rows:
            if idx != expected:
                self.missing(expected, f"the log jumps from index {expected - 1} to {idx}")
            if bytes(leaf) != hashlib.sha256(b"\x00" + body).digest():
                raise Failed(idx, "stored leaf is not SHA-256(0x00 || record)")
            try:
                rec = decode(bytes(body))
            except DecodeError as e:
                raise Failed(idx, f"record does not decode: {e}") from None
            self.counts["records"] += 1
            self.record(idx, bytes(body), rec, None if data is None else bytes(data))
            expected = idx + 1
        self.missing(expected, "the log ends")

    def missing(self, index: int, where: str) -> None:
        if self.due:
            d = self.due[0]
            raise Failed(index, f"missing action: rule {d.rule.name!r} was due here ({where})")
        if where != "the log ends":
            raise Failed(index, f"record missing ({where})")

    def payload_of(self, idx: int, rec: Publish, data: Optional[bytes]) -> Optional[bytes]:
        """The stored payload checked against the record, or None if erased."""
        if rec.payload_len == 0 and not data:
            return b""
        if data is None:
            return None
        if len(data) != rec.payload_len or hashlib.sha256(data).digest() != rec.payload_sha256:
            raise Failed(idx, "stored payload does not match the record's payload_sha256")
        return data

    def record(self, idx: int, body: bytes, rec: Record, data: Optional[bytes]) -> None:
        if self.due:
            d = self.due.pop(0)
            want = decode(d.record)
            assert isinstance(want, Publish)
            if body != d.record or not isinstance(rec, Publish):
                why = difference(want, rec) if isinstance(rec, Publish) and rec.auth == 2 \
                    else f"found {describe(rec)}"
                raise Failed(idx, f"wrong or missing action of rule {d.rule.name!r} for trigger "
                                  f"{want.trigger_index}: {why}")
            self.counts["actions"] += 1
            self.state.apply(idx, rec, d.payload)
            return
        if self.unverified and isinstance(rec, Publish) and rec.auth == 2 \
                and rec.trigger_index == self.unverified[0]:
            self.unverified_action(idx, rec, data)
            return
        self.unverified = None
        if isinstance(rec, RuleEvent):
            self.rule_event(idx, rec)
        elif isinstance(rec, Publish) and rec.auth == 2:
            raise Failed(idx, f"action without cause: {describe(rec)} names trigger {rec.trigger_index}, "
                              "but no rule active there implies it at this index")
        elif isinstance(rec, Publish):
            self.trigger(idx, rec, data)

    def rule_event(self, idx: int, rec: RuleEvent) -> None:
        self.by_topic.clear()
        if rec.action == 2:
            self.counts["rules_removed"] += 1
            self.rules.pop(rec.name, None)
            return
        assert rec.document is not None
        try:
            rule = self.engine.parse(rec.document, rec.name, idx)
        except RuleError as e:
            raise Failed(idx, f"installed rule {rec.name!r} is invalid: {e}") from None
        self.counts["rules_installed"] += 1
        self.rules.pop(rec.name, None)  # a re-install takes the new index's place
        self.rules[rec.name] = rule

    def trigger(self, idx: int, rec: Publish, data: Optional[bytes]) -> None:
        self.counts["triggers"] += 1
        rules = self.matching(rec.topic)
        payload = self.payload_of(idx, rec, data) if rules or rec.retain else None
        if rules:
            self.counts["triggers_evaluated"] += 1
            if payload is None:
                self.unverifiable.append({"index": idx, "why": "the trigger's payload was erased"})
                self.unverified = (idx, rec, list(rules))
            else:
                act = activation(rec, payload)
                self.state.erased_reads.clear()
                due: list[Due] = []
                for rule in rules:
                    try:
                        fired = fire(rule, rec, act)
                    except Unknown:
                        fired = None
                    if self.state.erased_reads:
                        topic, at = self.state.erased_reads[0]
                        self.unverifiable.append({"index": idx, "why": f"rule {rule.name!r} reads retained "
                                                  f"{topic!r}, set by record {at} whose payload was erased"})
                        self.unverified = (idx, rec, list(rules))
                        due = []
                        break
                    if fired:
                        topic, body = fired
                        due.append(Due(rule, encode_action(rec, idx, rule, topic, body), body))
                self.due = due
        self.state.apply(idx, rec, payload)

    def unverified_action(self, idx: int, rec: Publish, data: Optional[bytes]) -> None:
        """An action of an unverifiable trigger: only its shape is checked."""
        assert self.unverified is not None
        t, trig, rules = self.unverified
        while rules and ("$rule/" + rules[0].name, rules[0].hash) != (rec.device, rec.rule_hash):
            rules.pop(0)
        if not rules or rec.received_ms != trig.received_ms:
            raise Failed(idx, f"action without cause: {describe(rec)} names trigger {t}, whose active "
                              "rules in order do not include its rule there")
        rules.pop(0)
        self.counts["actions_unverified"] += 1
        payload = None
        if data is not None and hashlib.sha256(data).digest() == rec.payload_sha256:
            payload = data
        self.state.apply(idx, rec, payload)


def rows(db: sqlite3.Connection) -> Iterator[tuple[int, bytes, bytes, Optional[bytes]]]:
    q = ("SELECT r.idx, r.leaf, r.body, p.data FROM records r LEFT JOIN payloads p ON p.idx = r.idx "
         "ORDER BY r.idx")
    yield from db.execute(q)


def open_db(path: Path) -> sqlite3.Connection:
    if path.is_dir():
        path = path / "log.db"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such database")
    return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", type=Path, help="a sealmq data directory or its log.db")
    args = ap.parse_args(argv)
    replay = Replay()
    out: dict[str, Any] = {"ok": False, "failure": None}
    try:
        db = open_db(args.log)
        try:
            replay.run(rows(db))
            out["ok"] = True
        except Failed as f:
            out["failure"] = {"index": f.index, "why": f.why}
        finally:
            db.close()
    except (OSError, sqlite3.Error) as e:
        out["error"] = str(e)
    except Exception as e:  # noqa: BLE001 - reported, with exit 2, not taken for a verdict
        out["error"] = f"internal error at record {replay.counts['records']}: {e!r}"
    out.update(replay.counts)
    out["unverifiable"] = replay.unverifiable
    out["cel"] = f"cel-python {version('cel-python')}"
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    if "error" in out:
        return 2
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
