"""MQS1 device signatures (../shared/spec/mqs1.md), for Python devices.

A device signs each PUBLISH with its Ed25519 key. The 90-byte signature
block (SB) travels either as the MQTT 5 user property ``mqs1`` (base64url,
no padding) or, for MQTT 3.1.1, in front of the payload as an envelope
(``b"MQS1" + SB + payload``). Both carriers hold the same SB over the same
signed bytes, so a broker can move it from one to the other.

Only the ``cryptography`` package is needed; no MQTT library is imported
here, so the module can sit beside any client.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAGIC = b"MQS1"
VERSION = 1
SB_LEN = 90
# ver, flags, kid, ctr, ts_ms: the part of the SB that is itself signed.
HEADER_LEN = 26
PROPERTY_NAME = "mqs1"
ENVELOPE_OVERHEAD = len(MAGIC) + SB_LEN
FLAG_RETAIN = 0x01
MAX_U64 = 2**64 - 1
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class Mqs1Error(ValueError):
    """Input that MQS1 cannot sign or parse."""


def kid(public_key: bytes) -> bytes:
    """The key id: the first 8 bytes of SHA-256 of the raw 32-byte public key."""
    if len(public_key) != 32:
        raise Mqs1Error(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    return hashlib.sha256(public_key).digest()[:8]


def raw_public_key(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class SignatureBlock:
    retain: bool
    kid: bytes
    ctr: int
    ts_ms: int
    sig: bytes

    def header(self) -> bytes:
        """SB[0..26], the signed fields."""
        return encode_header(self.kid, self.retain, self.ctr, self.ts_ms)

    def to_bytes(self) -> bytes:
        return self.header() + self.sig

    @classmethod
    def from_bytes(cls, sb: bytes) -> SignatureBlock:
        if len(sb) != SB_LEN:
            raise Mqs1Error(f"a signature block is {SB_LEN} bytes, not {len(sb)}")
        ver, flags, key_id, ctr, ts_ms = struct.unpack(">BB8sQQ", sb[:HEADER_LEN])
        if ver != VERSION:
            raise Mqs1Error(f"signature block version {ver}, expected {VERSION}")
        if flags & ~FLAG_RETAIN:
            raise Mqs1Error(f"reserved flag bits set: {flags:#04x}")
        return cls(bool(flags & FLAG_RETAIN), key_id, ctr, ts_ms, sb[HEADER_LEN:])

    def property_value(self) -> str:
        """The value of the MQTT 5 user property ``mqs1``: base64url, no padding, 120 characters."""
        return base64.urlsafe_b64encode(self.to_bytes()).rstrip(b"=").decode("ascii")

    @classmethod
    def from_property_value(cls, value: str) -> SignatureBlock:
        # 90 bytes encode to exactly 120 characters, so there is never padding to
        # restore; the alphabet is checked first because the decoder skips what it
        # does not know.
        if len(value) != 120 or not _BASE64URL.fullmatch(value):
            raise Mqs1Error(f"an mqs1 property value is 120 base64url characters, not {value!r}")
        return cls.from_bytes(base64.urlsafe_b64decode(value))

    def envelope(self, payload: bytes) -> bytes:
        """The MQTT 3.1.1 carrier: ``MQS1 || SB || payload``."""
        return MAGIC + self.to_bytes() + payload


def encode_header(key_id: bytes, retain: bool, ctr: int, ts_ms: int) -> bytes:
    if len(key_id) != 8:
        raise Mqs1Error(f"a kid is 8 bytes, not {len(key_id)}")
    if not 1 <= ctr <= MAX_U64:
        raise Mqs1Error(f"the counter must be between 1 and 2^64-1, not {ctr}")
    if not 0 <= ts_ms <= MAX_U64:
        raise Mqs1Error(f"ts_ms must fit in 64 bits, not {ts_ms}")
    return struct.pack(">BB8sQQ", VERSION, FLAG_RETAIN if retain else 0, key_id, ctr, ts_ms)


def _str16(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise Mqs1Error(f"the {what} is {len(raw)} bytes of UTF-8; MQTT strings hold at most 65535")
    return struct.pack(">H", len(raw)) + raw


def tbs(header: bytes, device_id: str, topic: str, payload: bytes) -> bytes:
    """The bytes signed: "MQS1" || SB[0..26] || str16(device_id) || str16(topic) || SHA-256(payload).

    ``payload`` is the application payload, never the envelope.
    """
    if len(header) != HEADER_LEN:
        raise Mqs1Error(f"the signed SB header is {HEADER_LEN} bytes, not {len(header)}")
    return MAGIC + header + _str16(device_id, "device id") + _str16(topic, "topic") + hashlib.sha256(payload).digest()


def sign(
    private_key: Ed25519PrivateKey,
    device_id: str,
    topic: str,
    payload: bytes,
    *,
    retain: bool,
    ctr: int,
    ts_ms: int,
) -> SignatureBlock:
    """Signs one PUBLISH. ``device_id`` is the MQTT client id; ``ts_ms`` is 0 on a device without a clock."""
    key_id = kid(raw_public_key(private_key))
    header = encode_header(key_id, retain, ctr, ts_ms)
    sig = private_key.sign(tbs(header, device_id, topic, payload))
    return SignatureBlock(retain, key_id, ctr, ts_ms, sig)


def verify(public_key: bytes, device_id: str, topic: str, payload: bytes, retain: bool, sb: SignatureBlock) -> bool:
    """Whether ``sb`` is a valid signature by ``public_key`` of this PUBLISH, as a subscriber would check.

    ``retain`` is the PUBLISH's retain bit; it must equal the signed flag.
    """
    if sb.retain != retain or sb.kid != kid(public_key):
        return False
    signed = tbs(sb.header(), device_id, topic, payload)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(sb.sig, signed)
    except InvalidSignature:
        return False
    return True


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A device key file: 64 hex characters of RFC 8032 seed (as ``sealmq device keygen`` writes
    PREFIX.key), or a PEM "PRIVATE KEY" (PKCS#8, e.g. ``openssl genpkey -algorithm ed25519``)."""
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        except (ValueError, TypeError) as e:
            raise Mqs1Error(f"{path}: not an unencrypted PEM private key ({e})") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise Mqs1Error(f"{path}: the PEM key is not an Ed25519 key")
        return key
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise Mqs1Error(f"{path}: expected 64 hex characters (an Ed25519 seed) or a PEM private key")
    return Ed25519PrivateKey.from_private_bytes(seed)
