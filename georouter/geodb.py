"""A GeoIP database the router holds privately: a sealed in-memory copy, checked once.

Theory of operation. Two ways a GeoIP file used to take the router down:

- The C reader memory-maps the file itself, so `cp new.mmdb live.mmdb` (which truncates
  and rewrites it in place) pulls the pages from under a lookup: SIGBUS.
- The C reader trusts the file: its Python converter takes every map key for a UTF-8
  string, so a corrupt key is dereferenced as a pointer: SIGSEGV after a few hundred
  lookups. The reader has no verify call, and a full decode of GeoLite2-City (11 million
  items) takes 10-35 s in Python, far over the start-up budget.

So `load` copies the file once into an anonymous memory file (memfd), seals it against
any write, shrink or grow, and maps it read-only: nothing done to the file on disk can
reach it. DNS worker processes map the same memfd (passed as a file descriptor), so the
machine holds one copy however many workers run. Lookups walk the search tree and decode
records in Python (maxminddb's own bounded pure-Python decoder): on corrupt data they raise,
they cannot crash the process, and a walk costs about as much as the C reader's full-record
conversion did (~14 us against ~19 us for GeoLite2-City). `load` also checks the image
before it is used (`verify`), the way libmaxminddb's MMDB_verify_database does, within
the start-up budget: the metadata, that every record of every search-tree node points at
another node, the empty value or a map in the data section (one pass over the tree at C
speed, ~1 s), and a full decode of an evenly spread sample of the records.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import sys
from array import array
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

from maxminddb.decoder import Decoder
from maxminddb.reader import Metadata

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
METADATA_SEARCH_BYTES = 128 * 1024  # the marker lies in the file's last 128 KiB (the spec)
SEPARATOR_BYTES = 16  # zero bytes between the search tree and the data section
MAX_FILE_BYTES = 4 * 1024**3  # the format's 32-bit offsets cannot address more
VERIFY_SAMPLE_RECORDS = 1024  # data records decoded whole by `verify`
VERIFY_CHUNK_RECORDS = 1 << 16  # tree records checked per C call (~5 ms: the GIL is shared)
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_MAP_TYPE = 7  # a data item whose control byte's top three bits are 7 is a map
_MAP_HEADS = bytes(1 if byte >> 5 == _MAP_TYPE else 0 for byte in range(256))
_LOW_NIBBLE = bytes(byte & 0x0F for byte in range(256))
_HIGH_NIBBLE = bytes(byte >> 4 for byte in range(256))

IPAddress = IPv4Address | IPv6Address


class CorruptDatabase(ValueError):
    """The image is not a usable MaxMind DB; the message says what is wrong."""


class GeoDatabase:
    """A verified, immutable MaxMind DB image; `find` and `record` are the lookups."""

    def __init__(self, fd: int, source: str) -> None:
        """Map a sealed memfd another process loaded (`load` did the checking).

        The caller keeps `fd` and may close it at once: the mapping holds the memory."""
        self.fd = fd
        self.source = source
        self._owns_fd = False
        self._image = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        self._meta, meta_start = _metadata(self._image)
        self._nodes = self._meta["node_count"]
        record_size = self._meta["record_size"]
        self._tree_bytes = self._nodes * record_size // 4
        self._data_end = meta_start - len(METADATA_MARKER)
        if self._tree_bytes + SEPARATOR_BYTES > self._data_end:
            raise CorruptDatabase(f"search tree ({self._tree_bytes} bytes) does not fit the file")
        self._child = _child_reader(self._image, record_size)
        self._decoder = Decoder(self._image, self._tree_bytes + SEPARATOR_BYTES)
        self._ipv4_start = self._ipv4_subtree()

    @classmethod
    def load(cls, path: Path) -> GeoDatabase:
        """Copy `path` into a sealed memfd and verify it; OSError or CorruptDatabase."""
        fd = _sealed_copy(path)
        try:
            database = cls(fd, str(path))
            database._owns_fd = True
            database.verify()
        except BaseException:
            os.close(fd)
            raise
        return database

    def metadata(self) -> Metadata:
        return Metadata(**self._meta)

    def close(self) -> None:
        """Unmap (and close the memfd `load` made); the memory goes with the last mapping."""
        self._image.close()
        if self._owns_fd:
            os.close(self.fd)

    def __enter__(self) -> GeoDatabase:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def find(self, ip: IPAddress) -> tuple[int | None, int]:
        """(data offset of the address's record or None, prefix length of its network)."""
        bits = ip.max_prefixlen
        if bits == 32 and self._meta["ip_version"] == 6:
            node, depth = self._ipv4_start, 0  # prefix lengths relative to IPv4
        elif bits == 128 and self._meta["ip_version"] == 4:
            return None, 0  # an IPv6 address in an IPv4-only database: nothing known
        else:
            node, depth = 0, 0
        value, child, nodes = int(ip), self._child, self._nodes
        while node < nodes and depth < bits:
            node = child(node, value >> (bits - 1 - depth) & 1)
            depth += 1
        if node <= nodes:  # the empty value, or a tree deeper than the address (corrupt)
            return None, depth
        return node - nodes - SEPARATOR_BYTES, depth

    def record(self, offset: int) -> Any:
        """The data record at `offset` (from `find`); CorruptDatabase if it does not decode."""
        try:
            return self._decoder.decode(self._tree_bytes + SEPARATOR_BYTES + offset)[0]
        except Exception as exc:  # the pure-Python decoder raises, never crashes
            raise CorruptDatabase(f"data record at offset {offset}: {exc}") from None

    def get_with_prefix_len(self, ip: IPAddress | str) -> tuple[Any, int]:
        """The record for `ip` (None if none) and its network's prefix length."""
        offset, prefix_len = self.find(ip_address(ip) if isinstance(ip, str) else ip)
        return (None if offset is None else self.record(offset)), prefix_len

    def verify(self) -> None:
        """Check the tree and a sample of the records; CorruptDatabase says what is wrong."""
        data_start = self._tree_bytes + SEPARATOR_BYTES
        if any(self._image[self._tree_bytes : data_start]):
            raise CorruptDatabase("no data section separator after the search tree")
        records = _tree_records(self._image[: self._tree_bytes], self._meta["record_size"])
        # Where a record may point, by its value: a node or the empty value (node_count),
        # never the 16 separator values, else a data offset holding a map (City and Country
        # records are maps). Indexing past the end means pointing past the data section.
        targets = bytearray(b"\x01" * (self._nodes + 1))
        targets += bytes(SEPARATOR_BYTES - 1)
        targets += self._image[data_start : self._data_end].translate(_MAP_HEADS)
        # In chunks: a reload verifies on a thread, and one C call over 7 million records
        # would hold the GIL (and the event loop answering DNS) for a second or more.
        for start in range(0, len(records), VERIFY_CHUNK_RECORDS):
            chunk = records[start : start + VERIFY_CHUNK_RECORDS]
            try:
                bad = bytes(map(targets.__getitem__, chunk)).find(0)
            except IndexError:
                message = "search tree: a record points past the data section"
                raise CorruptDatabase(message) from None
            if bad >= 0:
                node, side = divmod(start + bad, 2)
                where = f"node {node} {('left', 'right')[side]} record {chunk[bad]}"
                raise CorruptDatabase(f"search tree: {where} points at no map")
        self._verify_sample(records)

    def _verify_sample(self, records: array[int]) -> None:
        step = max(1, len(records) // VERIFY_SAMPLE_RECORDS)
        for value in records[::step]:
            if value > self._nodes and not isinstance(
                self.record(value - self._nodes - SEPARATOR_BYTES), dict
            ):
                raise CorruptDatabase(f"data record for tree value {value} is not a map")

    def _ipv4_subtree(self) -> int:
        """Where IPv4 lookups start in an IPv6 tree: 96 zero bits down (::/96)."""
        node, depth = 0, 0
        if self._meta["ip_version"] == 6:
            while depth < 96 and node < self._nodes:
                node, depth = self._child(node, 0), depth + 1
        return node


def _sealed_copy(path: Path) -> int:
    """A memfd holding the bytes of `path`, sealed: no one can change or resize it."""
    fd = os.memfd_create(f"geoip:{path.name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with path.open("rb") as source:
            size = os.fstat(source.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise CorruptDatabase(f"{size} bytes: larger than a MaxMind DB can be")
            with os.fdopen(os.dup(fd), "wb") as copy:
                while chunk := source.read(1 << 20):
                    copy.write(chunk)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _metadata(image: mmap.mmap) -> tuple[dict[str, Any], int]:
    size = len(image)
    marker = image.rfind(METADATA_MARKER, max(0, size - METADATA_SEARCH_BYTES))
    if marker < 0:
        raise CorruptDatabase("no metadata section")
    start = marker + len(METADATA_MARKER)
    try:
        meta, _ = Decoder(image[start:], pointer_base=0).decode(0)
    except Exception as exc:  # the pure-Python decoder only raises: any error means corrupt
        raise CorruptDatabase(f"metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise CorruptDatabase("metadata is not a map")
    _expect(meta, "node_count", lambda v: isinstance(v, int) and 0 < v < 1 << 32)
    _expect(meta, "record_size", lambda v: v in (24, 28, 32))
    _expect(meta, "ip_version", lambda v: v in (4, 6))
    _expect(meta, "binary_format_major_version", lambda v: v == 2)
    _expect(meta, "database_type", lambda v: isinstance(v, str))
    _expect(meta, "build_epoch", lambda v: isinstance(v, int) and v >= 0)
    meta.setdefault("binary_format_minor_version", 0)
    meta.setdefault("languages", [])
    meta.setdefault("description", {})
    return meta, start


def _expect(meta: dict[str, Any], key: str, ok: Callable[[Any], bool]) -> None:
    value = meta.get(key)
    if isinstance(value, bool) or not ok(value):
        raise CorruptDatabase(f"metadata: bad {key}: {value!r}")


def _child_reader(image: mmap.mmap, record_size: int) -> Callable[[int, int], int]:
    """child(node, bit): the left (0) or right (1) record of a search-tree node."""
    if record_size == 24:

        def child(node: int, bit: int) -> int:
            at = node * 6 + bit * 3
            return image[at] << 16 | image[at + 1] << 8 | image[at + 2]

    elif record_size == 28:

        def child(node: int, bit: int) -> int:
            at = node * 7
            if bit:
                high, at = image[at + 3] & 0x0F, at + 4
            else:
                high = image[at + 3] >> 4
            return high << 24 | image[at] << 16 | image[at + 1] << 8 | image[at + 2]

    else:

        def child(node: int, bit: int) -> int:
            at = node * 8 + bit * 4
            return int.from_bytes(image[at : at + 4], "big")

    return child


def _tree_records(tree: bytes, record_size: int) -> array[int]:
    """Every record of every node (left, right, left, ...) as unsigned 32-bit values.

    Built with slices and translations, which run at C speed: a Python loop over the
    7 million records of GeoLite2-City would take seconds.
    """
    width = record_size // 4  # bytes per node
    wide = bytearray(8 * (len(tree) // width))  # two little-endian uint32 per node
    if record_size == 28:
        middle = tree[3::7]
        lanes = [(0, 2), (1, 1), (2, 0), (4, 6), (5, 5), (6, 4)]  # (output byte, input byte)
        wide[3::8] = middle.translate(_HIGH_NIBBLE)
        wide[7::8] = middle.translate(_LOW_NIBBLE)
    else:
        half = width // 2
        lanes = [(half - 1 - i, i) for i in range(half)]
        lanes += [(4 + half - 1 - i, half + i) for i in range(half)]
    for out, source in lanes:
        wide[out::8] = tree[source::width]
    records = array("I")
    if records.itemsize != 4:  # pragma: no cover - every platform we run on has 32-bit "I"
        raise RuntimeError("array('I') is not 32 bits wide")
    records.frombytes(wide)
    if sys.byteorder == "big":  # pragma: no cover - the lanes above are little-endian
        records.byteswap()
    return records
