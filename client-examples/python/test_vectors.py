#!/usr/bin/env python3
"""Checks mqs1.py against the spec's vectors (../shared/spec/vectors/mqs1.json), byte for byte.

Usage: python3 test_vectors.py [PATH/TO/mqs1.json]

For every case it rebuilds the TBS, the signature block (Ed25519 is
deterministic, so the signature must match too), the user property value and
the envelope, and it checks that every must_fail case does not verify. It
prints one line per check group and a closing count; exit 0 only when all hold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import mqs1

DEFAULT_VECTORS = Path(__file__).resolve().parents[3] / "shared" / "spec" / "vectors" / "mqs1.json"


def mismatches(checks: list[tuple[str, object, object]]) -> list[str]:
    return [f"{what}:\n  got  {got}\n  want {want}" for what, got, want in checks if got != want]


def check_case(key: Ed25519PrivateKey, case: dict) -> list[str]:
    """Rebuilds every byte string of one case."""
    public = mqs1.raw_public_key(key)
    payload = bytes.fromhex(case["payload_hex"])
    device_id, topic, retain = case["device_id"], case["topic"], case["retain"]
    sb = mqs1.sign(key, device_id, topic, payload, retain=retain, ctr=case["ctr"], ts_ms=case["ts_ms"])
    envelope = sb.envelope(payload)
    # What a subscriber does: parse the carried SB back and verify it.
    parsed = mqs1.SignatureBlock.from_property_value(case["user_property"]["value"])
    return mismatches(
        [
            ("tbs", mqs1.tbs(sb.header(), device_id, topic, payload).hex(), case["tbs"]),
            ("signature_block", sb.to_bytes().hex(), case["signature_block"]),
            ("property name", mqs1.PROPERTY_NAME, case["user_property"]["name"]),
            ("property value", sb.property_value(), case["user_property"]["value"]),
            ("envelope", envelope.hex(), case["envelope_payload"]),
            ("envelope length", len(envelope), mqs1.ENVELOPE_OVERHEAD + len(payload)),
            ("parsed property", parsed, sb),
            ("verifies", mqs1.verify(public, device_id, topic, payload, retain, parsed), True),
        ]
    )


def check_must_fail(key: Ed25519PrivateKey, cases: list[dict], bad: dict) -> list[str]:
    """The case's genuine SB, presented with one field of the PUBLISH changed, must not verify."""
    original = cases[bad["case"]]
    changed = {**original, **{k: v for k, v in bad.items() if k not in ("why", "case")}}
    sb = mqs1.SignatureBlock.from_bytes(bytes.fromhex(original["signature_block"]))
    payload = bytes.fromhex(changed["payload_hex"])
    public = mqs1.raw_public_key(key)
    ok = mqs1.verify(public, changed["device_id"], changed["topic"], payload, changed["retain"], sb)
    return mismatches([("verifies", ok, False)])


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_VECTORS
    vectors = json.loads(path.read_text(encoding="utf-8"))
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vectors["device_seed"]))
    public = mqs1.raw_public_key(key)
    results: list[tuple[str, list[str]]] = [
        (
            "key",
            mismatches(
                [
                    ("public key", public.hex(), vectors["device_public_key"]),
                    ("kid", mqs1.kid(public).hex(), vectors["kid"]),
                ]
            ),
        )
    ]
    cases = vectors["cases"]
    results += [(f"case {n}", check_case(key, case)) for n, case in enumerate(cases)]
    results += [
        (f"must_fail {n} ({bad['why']})", check_must_fail(key, cases, bad))
        for n, bad in enumerate(vectors["must_fail"])
    ]
    for name, failures in results:
        for failure in failures:
            print(f"FAILED {name}: {failure}", file=sys.stderr)
    failed = sum(1 for _, failures in results if failures)
    print(f"{path}: {len(cases)} cases, {len(vectors['must_fail'])} must_fail cases")
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
