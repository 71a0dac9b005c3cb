"""The CRC-32 that guards every record, hard state and snapshot in a data dir.

It is the checksum of ``zlib.crc32`` (IEEE 802.3) whichever library computes it, so the
on-disk format does not depend on what is installed. ISA-L's (the ``isal`` package, a
dependency where it ships wheels) uses the CPU's carry-less multiply and is about three
times faster than zlib's on a 1 KiB record; every node checksums every entry it stores,
and with 1 KiB commands that was the largest single cost of a follower after its copies.
"""

from __future__ import annotations

try:
    from isal.isal_zlib import crc32
except ImportError:  # a platform without isal's wheels: the same checksum, slower
    from zlib import crc32

__all__ = ["crc32"]
