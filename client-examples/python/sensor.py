#!/usr/bin/env python3
"""A sealmq device: publishes readings signed with MQS1 and prints where the broker logged them.

    python3 sensor.py --id sensor-7 --key sensor-7.key --count 3

MQTT 5 (the default) carries the signature as the `mqs1` user property and
gets the record's log index back in the PUBACK (`sealmq-index`); MQTT 3.1.1
(`--mqtt 3.1.1`) carries it in a payload envelope, and its PUBACK carries
no index. Every publish is QoS 1 and waits for its acknowledgement.

The counter is kept in a state file (default: the key file with suffix
`.state`), written and synced before each publish, so a counter is never
used twice, even across a crash. See DEVICES.md.

Exit codes: 0 all published; 1 the broker refused (CONNACK or PUBACK reason
>= 0x80, closed the connection, or did not log a publish); 2 could not run
(bad arguments, key or state file, broker unreachable).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import mqs1

INDEX_PROPERTY = "sealmq-index"


class Refused(Exception):
    """The broker said no (or stopped talking): exit 1."""


class CannotRun(Exception):
    """Something on this side is wrong: exit 2."""


class StopRequest:
    """SIGINT or SIGTERM: finish the publish in flight (so none is left in doubt), then disconnect."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, _signum: int, _frame: Any) -> None:
        self.requested = True


class CounterState:
    """The next MQS1 counter, persisted per key.

    The broker remembers the highest counter it saw per key; a counter it has
    seen is taken for a retransmission (acknowledged, not logged) and one far
    below is refused. So a counter must never be reused, even after a crash:
    it is written to disk, synced, before the publish that uses it. A crash
    between the write and the publish skips a counter, which is harmless.
    """

    def __init__(self, path: Path, kid: bytes) -> None:
        self.path = path
        self.kid = kid.hex()
        # One process per state file: two would hand out the same counters. The
        # lock is held (the file left open) for the life of the process.
        try:
            self._lock = open(path.with_name(path.name + ".lock"), "a")
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CannotRun(f"{path} is in use by another sensor process") from None
        except OSError as e:
            raise CannotRun(f"cannot use the state file {path}: {e}") from None
        self.last = self._read()

    def _read(self) -> int:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0
        try:
            state = json.loads(text)
            kid, last = state["kid"], state["last_ctr"]
        except (ValueError, KeyError, TypeError) as e:
            # Starting again at 1 would reuse counters: refuse instead.
            raise CannotRun(f"{self.path}: unreadable counter state ({e}); not guessing a counter") from None
        if kid != self.kid:
            raise CannotRun(
                f"{self.path} holds the counter of key {kid}, not of this key ({self.kid}); "
                "a new key starts from a new state file (--state)"
            )
        if not isinstance(last, int) or not 0 <= last < mqs1.MAX_U64:
            raise CannotRun(f"{self.path}: last_ctr {last!r} is not a usable counter")
        return last

    def reserve(self) -> int:
        """The next counter, durably recorded as used before it is returned."""
        ctr = self.last + 1
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"kid": self.kid, "last_ctr": ctr}).encode() + b"\n"
        try:
            with open(tmp, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            # rename is atomic: after a crash the file holds the old or the new counter, never half of one.
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # makes the rename itself durable
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise CannotRun(f"cannot record counter {ctr} in {self.path}: {e}") from None
        self.last = ctr
        return ctr


@dataclass
class Ack:
    """A CONNACK, PUBACK or DISCONNECT: its reason code and properties."""

    reason: mqtt.ReasonCode
    properties: Properties | None

    def describe(self) -> str:
        text = f"{self.reason.value:#04x} ({self.reason})"
        why = getattr(self.properties, "ReasonString", None)
        return f"{text}: {why}" if why else text


def user_property(properties: Properties | None, name: str) -> str | None:
    for key, value in getattr(properties, "UserProperty", None) or []:
        if key == name:
            return value
    return None


class Link:
    """One MQTT connection, driven from this thread (no background loop, no automatic
    reconnect: a refusal must stop the device, not be retried behind its back)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.v5 = args.mqtt == "5"
        self.timeout = args.timeout
        protocol = mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=args.id,
            protocol=protocol,
            clean_session=None if self.v5 else True,
        )
        if args.password is not None:
            self.client.username_pw_set(args.id, args.password)
        self.connack: Ack | None = None
        self.acks: dict[int, Ack] = {}
        self.closed: Ack | None = None
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: mqtt.ReasonCode, props: Properties | None) -> None:
        self.connack = Ack(reason, props)

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: mqtt.ReasonCode, props: Properties | None) -> None:
        self.acks[mid] = Ack(reason, props)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: mqtt.ReasonCode, props: Properties | None) -> None:
        self.closed = Ack(reason, props)

    def _pump(self, until: Callable[[], bool], seconds: float) -> bool:
        """Runs the network loop until `until()` or `seconds` pass; whether `until()` held."""
        deadline = time.monotonic() + seconds
        while not until():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed is not None:
                return until()
            if self.client.loop(timeout=min(left, 0.1)) != mqtt.MQTT_ERR_SUCCESS and self.closed is None:
                # Lost without a DISCONNECT callback (e.g. reset during the handshake).
                self.closed = Ack(mqtt.ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"), None)
        return True

    def connect(self, host: str, port: int) -> None:
        options = {"clean_start": True} if self.v5 else {}
        try:
            self.client.connect(host, port, keepalive=30, **options)
        except OSError as e:
            raise CannotRun(f"cannot reach the broker at {host}:{port}: {e}") from None
        if not self._pump(lambda: self.connack is not None, self.timeout):
            if self.closed is not None:
                raise Refused(f"the broker closed the connection during CONNECT: {self.closed.describe()}")
            raise Refused(f"no CONNACK from {host}:{port} within {self.timeout} s")
        assert self.connack is not None
        if self.connack.reason.is_failure:
            raise Refused(f"the broker refused the connection: {self.connack.describe()}")

    def publish(self, topic: str, payload: bytes, retain: bool, properties: Properties | None) -> Ack:
        """Publishes at QoS 1 and waits for the PUBACK."""
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise Refused(f"could not send the PUBLISH: {mqtt.error_string(info.rc)}")
        if self._pump(lambda: info.mid in self.acks, self.timeout):
            return self.acks.pop(info.mid)
        if self.closed is None:
            raise Refused(f"no PUBACK within {self.timeout} s")
        if self.v5:
            raise Refused(f"the broker disconnected before acknowledging: {self.closed.describe()}")
        raise Refused(
            "the broker closed the connection instead of acknowledging: MQTT 3.1.1 has no other way to "
            "refuse a QoS 1 publish (a bad or unregistered key, a revoked key, a topic outside the ACL, "
            "or a counter below the replay window); run with --mqtt 5 to get the reason"
        )

    def idle(self, seconds: float, stop: StopRequest) -> None:
        """Waits, keeping the connection alive (PINGREQ) and noticing a disconnect or a stop request."""
        self._pump(lambda: stop.requested, seconds)
        if self.closed is not None:
            raise Refused(f"the broker disconnected: {self.closed.describe()}")

    def close(self) -> None:
        if self.closed is None:
            self.client.disconnect()
            self._pump(lambda: self.closed is not None, 2)


def read_temperature() -> float:
    """Stands in for the real sensor: a slow, plausible wave around 21 °C."""
    return round(21 + 1.5 * math.sin(time.time() / 600), 2)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A sealmq device publishing MQS1-signed readings.")
    parser.add_argument("--host", default="localhost", help="broker host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=1883, help="broker MQTT port (default: %(default)s)")
    parser.add_argument("--id", required=True, help="the device id: its MQTT client id, as registered")
    parser.add_argument("--key", required=True, type=Path, help="the private key file (`sealmq device keygen`'s .key)")
    parser.add_argument("--state", type=Path, help="the counter state file (default: the key file with suffix .state)")
    parser.add_argument("--topic", default="plant/{device}/temp", help="where to publish; {device} = the id")
    parser.add_argument("--count", type=int, default=0, help="publish this many readings, then stop (0: forever)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between readings (default: %(default)s)")
    parser.add_argument("--mqtt", choices=["5", "3.1.1"], default="5", help="protocol version (default: %(default)s)")
    parser.add_argument("--retain", action="store_true", help="publish retained (the retain bit is signed)")
    parser.add_argument("--no-clock", action="store_true", help="sign ts_ms = 0, as a device without a clock")
    parser.add_argument(
        "--password",
        default=os.environ.get("SEALMQ_PASSWORD"),
        help="the device's MQTT password, if it has one (default: $SEALMQ_PASSWORD)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for CONNACK and each PUBACK")
    args = parser.parse_args(argv)
    if args.count < 0 or args.interval < 0 or args.timeout <= 0:
        parser.error("--count and --interval must not be negative, --timeout must be positive")
    return args


def run(args: argparse.Namespace, stop: StopRequest) -> None:
    if args.key.suffix == ".pub":
        # Both keygen files hold 64 hex characters; a public key would load as a (wrong) seed.
        raise CannotRun(f"{args.key} is the public key; give the private one (.key)")
    try:
        key = mqs1.load_private_key(args.key)
    except OSError as e:
        raise CannotRun(f"cannot read the key file: {e}") from None
    except mqs1.Mqs1Error as e:
        raise CannotRun(str(e)) from None
    kid = mqs1.kid(mqs1.raw_public_key(key))
    state = CounterState(args.state or args.key.with_suffix(".state"), kid)
    topic = args.topic.replace("{device}", args.id)

    link = Link(args)
    link.connect(args.host, args.port)
    how = (
        "MQTT 5 (signature in the mqs1 user property)"
        if link.v5
        else "MQTT 3.1.1 (signature in an MQS1 envelope; PUBACKs carry no log index)"
    )
    where = f"{args.host}:{args.port}"
    print(f"connected to {where} as {args.id} over {how}, key {kid.hex()}, next counter {state.last + 1}", flush=True)
    try:
        sent = 0
        while args.count == 0 or sent < args.count:
            if sent:
                link.idle(args.interval, stop)
            if stop.requested:
                print(f"stopped after {sent} publishes", flush=True)
                break
            payload = json.dumps({"temp_c": read_temperature()}, separators=(",", ":")).encode()
            ctr = state.reserve()
            ts_ms = 0 if args.no_clock else time.time_ns() // 1_000_000
            sb = mqs1.sign(key, args.id, topic, payload, retain=args.retain, ctr=ctr, ts_ms=ts_ms)
            if link.v5:
                properties = Properties(PacketTypes.PUBLISH)
                properties.UserProperty = [(mqs1.PROPERTY_NAME, sb.property_value())]
                ack = link.publish(topic, payload, args.retain, properties)
            else:
                ack = link.publish(topic, sb.envelope(payload), args.retain, None)
            what = f"ctr={ctr} on {topic}"
            if ack.reason.is_failure:
                raise Refused(f"the broker refused {what}: {ack.describe()}")
            index = user_property(ack.properties, INDEX_PROPERTY)
            if link.v5 and index is None:
                # sealmq puts the index in every PUBACK of a publish it logged; a success without one is
                # its answer to a counter it has already seen from this key.
                raise Refused(
                    f"the broker acknowledged {what} without logging it ({INDEX_PROPERTY} missing): "
                    f"it has seen counter {ctr} of key {kid.hex()} before, so {state.path} was lost or "
                    "restored from an older copy (see DEVICES.md, counters), or the broker is not sealmq"
                )
            print(f"published ctr={ctr} topic={topic} index={index or '-'} payload={payload.decode()}", flush=True)
            sent += 1
    finally:
        link.close()


def fail(code: int, message: str) -> NoReturn:
    print(f"sensor: error: {message}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    args = parse_args(sys.argv[1:])
    try:
        run(args, StopRequest())
    except Refused as e:
        fail(1, str(e))
    except (CannotRun, mqs1.Mqs1Error) as e:
        fail(2, str(e))


if __name__ == "__main__":
    main()
