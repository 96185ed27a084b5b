"""Give freed ciphertext buffers back to the OS in the server process (docs/design.md §6).

A round of a large model allocates and frees buffers of hundreds of MB (the packs of
records, replies pulled from the SuperLink). glibc's malloc serves a block of at least
``M_MMAP_THRESHOLD`` bytes with its own mapping and unmaps it when it is freed, but it
*raises* that threshold to the size of every such block freed (up to 32 MB), so from the
first freed 4 MB pack on, packs come from the heap, whose freed memory is reused only by
allocations that fit and is rarely returned: the ServerApp's RSS then only grows. Setting
the threshold explicitly turns that adjustment off. Measured on a 5M-parameter, 2-round
``default`` run of the in-process driver (benchmarks/deploy_25m.py's setting, smaller):
ServerApp peak RSS 846 MB -> 767 MB, RSS at the end 810 MB -> 603 MB.
"""

from __future__ import annotations

import ctypes
import logging

__all__ = ["MMAP_THRESHOLD", "release_large_buffers"]

log = logging.getLogger("cifer_flwr.strategies")

#: glibc's ``mallopt`` parameter number of ``M_MMAP_THRESHOLD`` (malloc.h).
_M_MMAP_THRESHOLD = -3
#: Blocks of at least this many bytes get their own mapping, returned to the OS when freed.
MMAP_THRESHOLD = 1 << 20

_state = {"set": False}


def release_large_buffers() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` (once per process).

    Returns
    -------
    bool
        ``True`` when the setting is in effect; ``False`` where there is no glibc
        ``mallopt`` (macOS, musl): nothing is changed there.

    """
    if _state["set"]:
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _state["set"] = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if _state["set"]:
        log.debug("malloc: blocks of >= %d bytes get their own mapping", MMAP_THRESHOLD)
    return _state["set"]
