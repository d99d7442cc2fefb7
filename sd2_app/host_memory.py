"""This machine's RAM and this process's share of it, read without torch (POSIX; /proc on Linux).

The model manager sizes its budgets from the RAM (sd2_app/manager/memory.py); the A1111 API's /memory reports
both (sd2_app/api/a1111_system.py), also in a front end that never imports torch (--serve).
"""

from __future__ import annotations

import os

GIB = 2**30


def host_memory_bytes() -> int:
    """Physical RAM of this machine (POSIX), or 16 GiB when it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * GIB


def resident_bytes() -> int | None:
    """This process's resident memory (Linux's /proc/self/statm), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
