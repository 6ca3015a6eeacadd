#!/usr/bin/env python3
"""An independent C2SP tlog-tiles reader, written from the specs alone.

    https://c2sp.org/tlog-tiles        (tile paths, partial tiles, entry bundles)
    https://c2sp.org/tlog-checkpoint   (the checkpoint note body)

Given a log's URL prefix it fetches <prefix>/checkpoint, works out every tile
the checkpoint's tree size implies (full tiles and the rightmost partial
tile of each level), fetches them and every entry bundle, and rebuilds the
RFC 6962 root from them:

  * every hash of a level-L tile (L >= 1) must be the Merkle Tree Hash of the
    full level-(L-1) tile below it, recomputed here;
  * every entry of a bundle must hash, as an RFC 6962 leaf, to the hash at
    the same position of the level-0 tile;
  * the root, folded from the highest-level hashes that cover each complete
    subtree, must equal the checkpoint's root.

It does not check the note's signature (the caller does, with the log's
verifier key): it prints the note it used, so the caller checks exactly that
one. Python 3 standard library only, so the check does not lean on any
Merkle or tlog library that might share the server's mistakes.

Output (stdout, one line of JSON) on success, exit 0:
  {"origin", "size", "root_b64", "computed_root_b64", "checkpoint",
   "tiles_fetched", "bundles_fetched", "entries", "levels"}
On any mismatch or protocol violation: a message starting with "FAILED: " on
stderr and exit 1. On usage or network errors that prevent the check: exit 2.
"""

import argparse
import base64
import gzip
import hashlib
import http.client
import json
import sys
import urllib.parse

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256 hashes per full tile
HASH_LEN = 32
MAX_LEVEL = 63  # tile levels are 0..63


class CheckFailed(Exception):
    """The log served something the specs (or the checkpoint) rule out."""


class CannotRun(Exception):
    """The check could not be carried out (network, usage)."""


def leaf_hash(entry):
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth_of_power_of_two(hashes):
    """Merkle Tree Hash over 2^k subtree hashes of equal height (RFC 6962
    splits a power of two exactly in half, so this is a plain binary fold)."""
    n = len(hashes)
    if n == 0 or n & (n - 1):
        raise ValueError(f"{n} is not a power of two")
    level = list(hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def encode_index(n):
    """<N> of a tile path: zero-padded 3-digit elements, all but the last
    prefixed with "x" (1234067 -> x001/x234/067)."""
    if n < 0:
        raise ValueError("negative tile index")
    digits = str(n)
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i:i + 3] for i in range(0, len(digits), 3)]
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


def tile_path(level, index, width):
    """tile/<L>/<N>[.p/<W>]; width 256 is a full tile (no suffix)."""
    path = f"tile/{level}/{encode_index(index)}"
    return path if width == TILE_WIDTH else f"{path}.p/{width}"


def entries_path(index, width):
    path = f"tile/entries/{encode_index(index)}"
    return path if width == TILE_WIDTH else f"{path}.p/{width}"


def tiles_for_size(size):
    """Every tile a tree of `size` leaves is made of, per level: a list of
    (index, width). Level L holds floor(size / 256^L) hashes: that many
    // 256 full tiles, then one partial tile of the remainder if non-zero
    (empty tiles are never served). Levels stop where no hash is left."""
    levels = []
    level = 0
    while level <= MAX_LEVEL:
        count = size // (TILE_WIDTH ** level)
        if count == 0:
            break
        full, partial = divmod(count, TILE_WIDTH)
        tiles = [(n, TILE_WIDTH) for n in range(full)]
        if partial:
            tiles.append((full, partial))
        levels.append(tiles)
        level += 1
    return levels


def parse_checkpoint(text):
    """The body of a C2SP checkpoint note: origin, size, base64 root, then
    optional extension lines, then a blank line and the signature lines."""
    if "\n\n" not in text:
        raise CheckFailed("checkpoint: no blank line between the body and the signatures")
    body, signatures = text.split("\n\n", 1)
    lines = body.split("\n")
    if len(lines) < 3:
        raise CheckFailed(f"checkpoint: fewer than three body lines: {body!r}")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if any(not line for line in lines):
        raise CheckFailed("checkpoint: an empty body line")
    if not origin or any(c.isspace() or c == "+" for c in origin):
        raise CheckFailed(f"checkpoint: origin {origin!r} is empty or holds a space or '+'")
    if not size_text.isascii() or not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise CheckFailed(f"checkpoint: tree size {size_text!r} is not a decimal number without leading zeros")
    try:
        root = base64.b64decode(root_text, validate=True)
    except ValueError as e:
        raise CheckFailed(f"checkpoint: root {root_text!r} is not base64: {e}") from None
    if len(root) != HASH_LEN or base64.b64encode(root).decode() != root_text:
        raise CheckFailed(f"checkpoint: root {root_text!r} is not 32 bytes of standard padded base64")
    if not any(line.startswith("\u2014 ") for line in signatures.split("\n")):
        raise CheckFailed("checkpoint: no signature line")
    return origin, int(size_text), root


class Fetcher:
    """GETs over one keep-alive HTTP/1.1 connection (reopened if the server
    closes it), with gzip decoded as tlog-tiles allows without negotiation."""

    def __init__(self, base_url, timeout, check_types=True):
        self.check_types = check_types
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise CannotRun(f"not an http(s) URL: {base_url!r}")
        self.scheme, self.host, self.port = url.scheme, url.hostname, url.port
        self.prefix = url.path.rstrip("/")
        self.timeout = timeout
        self.conn = None
        self.requests = 0

    def _connect(self):
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        self.conn = cls(self.host, self.port, timeout=self.timeout)

    def get(self, path):
        """(status, headers, body) of GET <prefix>/<path>."""
        target = f"{self.prefix}/{path}"
        headers = {"Accept-Encoding": "gzip, identity", "User-Agent": "sealmq-tlog-tiles-test"}
        for attempt in (1, 2):
            if self.conn is None:
                self._connect()
            try:
                self.conn.request("GET", target, headers=headers)
                response = self.conn.getresponse()
                body = response.read()
                break
            except (http.client.HTTPException, OSError) as e:
                # A keep-alive connection the server closed between requests
                # fails on first use; one fresh connection is fair, twice is not.
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise CannotRun(f"GET {target}: {e}") from None
        self.requests += 1
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        if response.getheader("Content-Encoding", "identity").lower() == "gzip":
            body = gzip.decompress(body)
        return response.status, response, body

    def get_ok(self, path, content_type):
        status, response, body = self.get(path)
        if status != 200:
            raise CheckFailed(f"GET /{path}: HTTP {status} (the checkpoint's size requires it): {body[:200]!r}")
        got = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if self.check_types and got != content_type:
            raise CheckFailed(f"GET /{path}: Content-Type {got!r}, expected {content_type!r}")
        return body


def split_hashes(body, width, path):
    if len(body) != width * HASH_LEN:
        raise CheckFailed(f"/{path}: {len(body)} bytes, expected {width} hashes = {width * HASH_LEN} bytes")
    return [body[i:i + HASH_LEN] for i in range(0, len(body), HASH_LEN)]


def parse_bundle(body, width, path):
    """A sequence of big-endian uint16 length-prefixed entries, exactly `width` of them."""
    entries, at = [], 0
    while at < len(body):
        if at + 2 > len(body):
            raise CheckFailed(f"/{path}: truncated length prefix at byte {at}")
        length = int.from_bytes(body[at:at + 2], "big")
        at += 2
        if at + length > len(body):
            raise CheckFailed(f"/{path}: entry {len(entries)} claims {length} bytes, only {len(body) - at} left")
        entries.append(body[at:at + length])
        at += length
    if len(entries) != width:
        raise CheckFailed(f"/{path}: {len(entries)} entries, expected {width}")
    return entries


def root_from_levels(size, levels):
    """RFC 6962 MTH of the first `size` leaves, where levels[L] lists the
    hashes of the aligned complete subtrees of 256^L leaves (L = 0 are leaf
    hashes). MTH splits at the largest power of two below n, so every left
    part is an aligned complete subtree of 2^k leaves: it is folded from the
    2^(k - 8L) hashes of the highest level L with 8L <= k."""

    def mth(start, end):
        n = end - start
        if n & (n - 1) == 0:
            k = n.bit_length() - 1
            level = k // TILE_HEIGHT
            span = TILE_WIDTH ** level
            first = start // span
            return mth_of_power_of_two(levels[level][first:first + n // span])
        split = 1 << ((n - 1).bit_length() - 1)
        return node_hash(mth(start, start + split), mth(start + split, end))

    if size == 0:
        return hashlib.sha256(b"").digest()
    return mth(0, size)


def check_log(base_url, timeout=30.0, fetch_entries=True, check_types=True):
    fetcher = Fetcher(base_url, timeout, check_types)
    note = fetcher.get_ok("checkpoint", "text/plain").decode("utf-8")
    origin, size, root = parse_checkpoint(note)

    plan = tiles_for_size(size)
    hashes = []  # hashes[L]: every level-L hash, in order, from full and partial tiles
    tiles_fetched = 0
    for level, tiles in enumerate(plan):
        row = []
        for index, width in tiles:
            path = tile_path(level, index, width)
            row.extend(split_hashes(fetcher.get_ok(path, "application/octet-stream"), width, path))
            tiles_fetched += 1
        if len(row) != size // TILE_WIDTH ** level:
            raise AssertionError("tile plan does not cover the level")  # a bug here, not in the log
        hashes.append(row)

    # A level-L hash is the MTH of the full level-(L-1) tile beneath it.
    # Partial tiles are never hashed upwards, so only full ones are checked.
    for level in range(1, len(hashes)):
        below = hashes[level - 1]
        for n, parent in enumerate(hashes[level]):
            computed = mth_of_power_of_two(below[n * TILE_WIDTH:(n + 1) * TILE_WIDTH])
            if computed != parent:
                raise CheckFailed(
                    f"tile/{level}/{encode_index(n // TILE_WIDTH)}: hash {n % TILE_WIDTH} is "
                    f"{base64.b64encode(parent).decode()}, but the level-{level - 1} tile "
                    f"{encode_index(n)} beneath it hashes to {base64.b64encode(computed).decode()}"
                )

    computed_root = root_from_levels(size, hashes)
    if computed_root != root:
        raise CheckFailed(
            f"the root rebuilt from the tiles is {base64.b64encode(computed_root).decode()}, "
            f"the checkpoint of size {size} says {base64.b64encode(root).decode()}"
        )

    entries = 0
    bundles_fetched = 0
    if fetch_entries and plan:
        for index, width in plan[0]:
            path = entries_path(index, width)
            bundle = parse_bundle(fetcher.get_ok(path, "application/octet-stream"), width, path)
            bundles_fetched += 1
            for i, entry in enumerate(bundle):
                position = index * TILE_WIDTH + i
                if leaf_hash(entry) != hashes[0][position]:
                    raise CheckFailed(
                        f"/{path}: entry {i} (log index {position}) hashes to "
                        f"{leaf_hash(entry).hex()}, the level-0 tile holds {hashes[0][position].hex()}"
                    )
                entries += 1

    return {
        "origin": origin,
        "size": size,
        "root_b64": base64.b64encode(root).decode(),
        "computed_root_b64": base64.b64encode(computed_root).decode(),
        "checkpoint": note,
        "tiles_fetched": tiles_fetched,
        "bundles_fetched": bundles_fetched,
        "entries": entries,
        "levels": [[len(tiles), tiles[-1][1] if tiles and tiles[-1][1] != TILE_WIDTH else 0] for tiles in plan],
        "requests": fetcher.requests,
    }


def self_test():
    """Known answers, so a bug in the client is not mistaken for one in the log."""
    assert encode_index(0) == "000"
    assert encode_index(7) == "007"
    assert encode_index(999) == "999"
    assert encode_index(1000) == "x001/000"
    assert encode_index(1234067) == "x001/x234/067"
    assert tile_path(0, 273, 112) == "tile/0/273.p/112"
    assert entries_path(1, 256) == "tile/entries/001"
    # The spec's example: size 70,000 is 273 full level-0 tiles and one of
    # width 112, one full level-1 tile and one of width 17, one level-2 tile of width 1.
    plan = tiles_for_size(70000)
    assert len(plan) == 3
    assert len(plan[0]) == 274 and plan[0][-1] == (273, 112) and plan[0][-2] == (272, 256)
    assert plan[1] == [(0, 256), (1, 17)]
    assert plan[2] == [(0, 1)]
    # And size 256: one full level-0 tile and a level-1 tile of width 1.
    assert tiles_for_size(256) == [[(0, 256)], [(0, 1)]]
    assert tiles_for_size(0) == []
    # RFC 6962 test data (the 8 leaves of the Certificate Transparency test
    # suite): the roots of the first 1..8 of them.
    leaves = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                         "606162636465666768696a6b6c6d6e6f"]]
    roots = ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
             "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
             "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
             "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
             "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
             "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
             "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]
    for n in range(1, 9):
        got = root_from_levels(n, [[leaf_hash(e) for e in leaves[:n]]])
        assert got.hex() == roots[n - 1], (n, got.hex())
    # The tiled fold agrees with a plain leaf-level fold on a tree with three levels.
    size = 70000
    level0 = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    level1 = [mth_of_power_of_two(level0[i:i + 256]) for i in range(0, size - size % 256, 256)]
    level2 = [mth_of_power_of_two(level1[i:i + 256]) for i in range(0, len(level1) - len(level1) % 256, 256)]

    def plain(hs):
        if len(hs) == 1:
            return hs[0]
        split = 1 << ((len(hs) - 1).bit_length() - 1)
        return node_hash(plain(hs[:split]), plain(hs[split:]))

    for n in (1, 255, 256, 257, 65535, 65536, 65537, 70000):
        levels = [level0[:n], level1[:n // 256], level2[:n // 65536]]
        assert root_from_levels(n, levels) == plain(level0[:n]), n


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_url", nargs="?", help="the log's URL prefix, e.g. http://127.0.0.1:8080")
    parser.add_argument("--no-entries", action="store_true", help="check the tiles only, not the entry bundles")
    parser.add_argument(
        "--static",
        action="store_true",
        help="a plain static file server (an archive directory): its Content-Types are its own guesses, not checked",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request")
    parser.add_argument("--self-test", action="store_true", help="check the client against known answers and exit")
    args = parser.parse_args()
    if args.self_test:
        self_test()
        print(json.dumps({"self_test": "ok"}))
        return 0
    if not args.base_url:
        parser.error("base_url is required")
    try:
        result = check_log(args.base_url, args.timeout, not args.no_entries, not args.static)
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except CannotRun as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
