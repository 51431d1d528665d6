"""zfec's parity blocks computed by ISA-L: the same bytes, about four times faster.

ISA-L (Intel's Intelligent Storage Acceleration Library) multiplies blocks by any
GF(2^8) matrix with SIMD code, over the same field as zfec (polynomial 0x11d). Given
zfec's own matrix (`protocol.encoding.parity_matrix`) it computes zfec's code: chunk
ids and the format do not change, and a node with ISA-L and one without write the same
chunks. Measured here on one 4 MiB segment, 3-of-10: zfec 16 ms, ISA-L 4 ms. Parity
was the largest single cost of a put after encryption (`python -m benchmarks encoding`
prints both).

Where it comes from: a system `libisal.so.2` if the dynamic loader finds one, else the
copy that pyeclib's Linux wheels bundle (a dependency on Linux x86-64 and aarch64 for
this reason). Without either, or with `FREEHOLD_PARITY=zfec` in the environment, nodes
use zfec. Before ISA-L computes any (k, n) it is checked against zfec for that (k, n)
on test blocks of several lengths (the short ones take ISA-L's scalar path), and zfec
is used for it if they differ or the library fails: a library that is wrong on a test
length costs speed, not a wrong chunk.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from protocol.encoding import Parity, parity_matrix, zfec_parity

__all__ = ["IsalParity", "best_parity", "find_isal", "load_isal"]

logger = logging.getLogger(__name__)

SYSTEM_LIBRARY: Final = "libisal.so.2"
ENVIRONMENT: Final = "FREEHOLD_PARITY"  # "zfec": never use ISA-L
# Block lengths of the self-check: ISA-L has a scalar path for short blocks and vector
# loops with tails for long ones; each must give zfec's bytes.
CHECK_SIZES: Final = (1, 15, 31, 63, 64, 65, 1000, 4099)
# ec_encode_data takes the length as a C int.
MAX_BLOCK_SIZE: Final = 2**31 - 1

# Bytes objects are made by the C API's constructor with no contents and filled before
# anything else sees them, as C extensions do: no zero-filling, no copy.
_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_bytes_address = ctypes.pythonapi.PyBytes_AsString
_bytes_address.restype = ctypes.c_void_p
_bytes_address.argtypes = (ctypes.py_object,)


class IsalParity:
    """A `Parity` backed by ISA-L's `ec_encode_data` (thread-safe; ctypes lets go of the
    GIL during the call, so worker threads encode in parallel)."""

    def __init__(self, library: ctypes.CDLL, name: str = "") -> None:
        self.name = name or str(library._name)
        self._init_tables = library.ec_init_tables
        self._init_tables.restype = None
        self._init_tables.argtypes = (
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_void_p,
        )
        self._encode = library.ec_encode_data
        self._encode.restype = None
        self._encode.argtypes = (
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        )
        # (k, n) -> ISA-L's expanded tables, or None where the self-check failed.
        self._tables: dict[tuple[int, int], ctypes.Array[ctypes.c_char] | None] = {}
        self._lock = threading.Lock()

    def __call__(self, blocks: Sequence[bytes], k: int, n: int) -> Sequence[bytes]:
        tables = self._tables[(k, n)] if (k, n) in self._tables else self._prepare(k, n)
        if tables is None:
            return zfec_parity(blocks, k, n)
        return self._run(tables, blocks, k, n)

    def agrees(self, k: int, n: int) -> bool:
        """Whether ISA-L gives zfec's bytes for (k, n) (and will be used for it)."""
        return self._prepare(k, n) is not None

    def _prepare(self, k: int, n: int) -> ctypes.Array[ctypes.c_char] | None:
        with self._lock:
            if (k, n) in self._tables:
                return self._tables[(k, n)]
            tables = ctypes.create_string_buffer(32 * k * (n - k))
            try:
                self._init_tables(k, n - k, parity_matrix(k, n), tables)
                agrees = all(self._agrees(tables, k, n, size) for size in CHECK_SIZES)
                if not agrees:
                    logger.warning(
                        "%s disagrees with zfec for %d-of-%d: using zfec", self.name, k, n
                    )
            except Exception:  # any failure of the library only means: use zfec
                logger.exception("%s failed its check for %d-of-%d: using zfec", self.name, k, n)
                agrees = False
            self._tables[(k, n)] = tables if agrees else None
            return self._tables[(k, n)]

    def _agrees(self, tables: ctypes.Array[ctypes.c_char], k: int, n: int, size: int) -> bool:
        # Every byte value in every data block, each block starting at another one.
        sample = bytes(range(256)) * ((size + k) // 256 + 2)
        blocks = [sample[j % 256 : j % 256 + size] for j in range(k)]
        return self._run(tables, blocks, k, n) == zfec_parity(blocks, k, n)

    def _run(
        self, tables: ctypes.Array[ctypes.c_char], blocks: Sequence[bytes], k: int, n: int
    ) -> list[bytes]:
        if len(blocks) != k:
            raise ValueError(f"{len(blocks)} data blocks given for {k}-of-{n}")
        size = len(blocks[0])
        if size > MAX_BLOCK_SIZE:
            raise ValueError(f"blocks of {size} bytes are over ISA-L's {MAX_BLOCK_SIZE}")
        for block in blocks:
            # c_char_p points into a bytes object's own buffer; anything else would be
            # copied, or not be the length checked here.
            if type(block) is not bytes or len(block) != size:
                raise ValueError(f"data blocks must be bytes of one length ({size})")
        out = [_new_bytes(None, size) for _ in range(n - k)]
        data = (ctypes.c_char_p * k)(*blocks)
        coding = (ctypes.c_void_p * (n - k))(*(_bytes_address(block) for block in out))
        if size:
            self._encode(size, k, n - k, tables, data, coding)
        return out


def find_isal() -> list[str]:
    """Where to look for ISA-L, in order: the system's, then pyeclib's bundled copy."""
    places = [SYSTEM_LIBRARY]
    spec = importlib.util.find_spec("pyeclib")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bundled = Path(location).parent / "pyeclib.libs"
            places += sorted(str(path) for path in bundled.glob("libisal*.so*"))
    return places


def load_isal() -> IsalParity | None:
    """ISA-L from the first place in `find_isal()` that loads and gives zfec's bytes for
    the default 3-of-10, or None."""
    for place in find_isal():
        try:
            parity = IsalParity(ctypes.CDLL(place), place)
        except (OSError, AttributeError) as exc:  # not there, or not ISA-L
            logger.debug("no ISA-L at %s: %s", place, exc)
            continue
        if parity.agrees(3, 10):
            return parity
    return None


@functools.cache
def best_parity() -> Parity:
    """ISA-L if it loads (and is not turned off by FREEHOLD_PARITY=zfec), else zfec."""
    choice = os.environ.get(ENVIRONMENT, "").strip().lower()
    if choice not in ("", "isal", "zfec"):
        logger.warning("%s=%r is neither isal nor zfec: using the default", ENVIRONMENT, choice)
    isal = None if choice == "zfec" else load_isal()
    if isal is None:
        logger.info("parity blocks by zfec")
        return zfec_parity
    logger.info("parity blocks by ISA-L (%s)", isal.name)
    return isal
