"""The data dir's checksum is zlib's CRC-32, whichever library computes it.

A data dir written where ``isal`` is installed must open where it is not, and the other way
round: the format names one checksum, not one library.
"""

from __future__ import annotations

import importlib.util
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyraft_trio._storage import _checksum


@given(data=st.binary(max_size=4096), start=st.integers(0, 2**32 - 1))
def test_checksum_is_zlibs_crc32(data: bytes, start: int) -> None:
    assert _checksum.crc32(data) == zlib.crc32(data)
    assert _checksum.crc32(data, start) == zlib.crc32(data, start)


@given(data=st.binary(max_size=2048), cut=st.integers(0, 2048))
def test_checksum_runs_over_pieces_and_views(data: bytes, cut: int) -> None:
    """Records are checked through memoryviews of a segment, and a large entry is summed in
    two pieces (its head, then its data)."""
    head, rest = data[:cut], data[cut:]
    assert _checksum.crc32(rest, _checksum.crc32(head)) == zlib.crc32(data)
    with memoryview(bytearray(data)) as view:
        assert _checksum.crc32(view[cut:]) == zlib.crc32(rest)


@pytest.mark.skipif(importlib.util.find_spec("isal") is None, reason="isal is not installed")
def test_the_fast_checksum_is_used_where_installed() -> None:
    from isal import isal_zlib

    assert _checksum.crc32 is isal_zlib.crc32
