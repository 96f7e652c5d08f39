"""The physical pages a set of processes holds, each page counted once, from /proc/PID/pagemap.

Summing RSS counts a page once per process that maps it: the runtime template's pages that its forked function
instances share copy-on-write, and the shared libraries every process maps, are counted several times over. The
page frame numbers in pagemap say which pages are the same; reading them needs CAP_SYS_ADMIN (root), without it
the kernel reports every frame as 0 and `readable()` is False.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_PROC = Path("/proc")
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PRESENT = np.uint64(1 << 63)
_FILE_OR_SHARED = np.uint64(1 << 61)  # a file page or shared anonymous memory (shmem): the file-backed side of RSS
_PFN = np.uint64((1 << 55) - 1)
_CHUNK = 1 << 18  # pagemap entries per read: 2 MiB of them, 1 GiB of address space
_USER_TOP = 1 << 47  # [vsyscall] and other kernel-side ranges above user space have no pagemap entries


def frames(pid: int) -> np.ndarray | None:
    """A process's resident pages as keys `frame * 2 + file-backed` (uint64, unsorted); None when it is gone."""
    try:
        maps = (_PROC / str(pid) / "maps").read_text()
        fd = os.open(_PROC / str(pid) / "pagemap", os.O_RDONLY)
    except OSError:
        return None
    out = []
    try:
        for line in maps.splitlines():
            lo, _, hi = line.partition(" ")[0].partition("-")
            start, end = int(lo, 16), int(hi, 16)
            if start >= _USER_TOP:
                continue
            # in chunks: a reserved but untouched range (an allocator's arena, say) may span gigabytes of entries
            for page in range(start // PAGE, end // PAGE, _CHUNK):
                try:
                    raw = os.pread(fd, min(_CHUNK, end // PAGE - page) * 8, page * 8)
                except OSError:  # the range was unmapped since maps was read
                    break
                entries = np.frombuffer(raw, dtype=np.uint64)
                entries = entries[(entries & _PRESENT) != 0]
                if entries.size:
                    out.append((entries & _PFN) * np.uint64(2) + ((entries & _FILE_OR_SHARED) != 0).astype(np.uint64))
    except OSError:
        return None
    finally:
        os.close(fd)
    return np.concatenate(out) if out else np.empty(0, dtype=np.uint64)


def _distinct(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct keys (np.unique is several times slower on a million uint64 here)."""
    keys = np.sort(keys)
    keep = np.ones(keys.size, dtype=bool)
    keep[1:] = keys[1:] != keys[:-1]
    return keys[keep]


def readable() -> bool:
    """Whether this process may read frame numbers (it sees its own pages' frames as non-zero)."""
    keys = frames(os.getpid())
    return keys is not None and bool((keys >> np.uint64(1)).any())


def held_once(pids: list[int]) -> dict[int, tuple[int, int]]:
    """pid -> (anonymous, file-backed) bytes of the pages it holds, a page that several of `pids` map counted
    once, under the first of them in the list's order: the values add up to what all of them hold together.
    A process that is gone is left out."""
    keys, owners, read = [], [], []
    for rank, pid in enumerate(pids):
        k = frames(pid)
        if k is not None:
            keys.append(_distinct(k))  # a page mapped twice in one process is still one page
            owners.append(np.full(keys[-1].size, rank, dtype=np.int32))
            read.append(rank)
    if not keys:
        return {}
    all_keys, all_owners = np.concatenate(keys), np.concatenate(owners)
    order = np.argsort(all_keys, kind="stable")  # equal keys stay in rank order: the first is the earliest holder
    sorted_keys = all_keys[order]
    first = np.ones(sorted_keys.size, dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    holder, backed = all_owners[order][first], (sorted_keys[first] & np.uint64(1)).astype(bool)
    n = len(pids)
    file_pages = np.bincount(holder[backed], minlength=n)
    anon_pages = np.bincount(holder[~backed], minlength=n)
    return {pids[r]: (int(anon_pages[r]) * PAGE, int(file_pages[r]) * PAGE) for r in read}
