"""What the board can give a model: RAM, the service's cgroup memory limit, the CPU's features.

Under systemd the appliance runs in its own cgroup with `MemoryMax=` (the unit), so
the memory a new model may use is the smaller of the system's MemAvailable and what
the cgroup still allows (memory.max - memory.current, the tightest limit on the way
up the cgroup tree). The CPU's features decide whether llama.cpp repacks Q4_0
weights at load (then mmap would hold them twice); they come from /proc/cpuinfo,
or, where a sandbox hides it (systemd's ProcSubset=pid), from the kernel's
hardware capabilities (getauxval(AT_HWCAP)), which no sandbox can hide.

Every function takes its roots as arguments, so tests give them a fake /proc and
/sys/fs/cgroup.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Optional, Set

PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")

AT_HWCAP = 16
# arm64 HWCAP bits (arch/arm64/include/uapi/asm/hwcap.h) -> /proc/cpuinfo's names
ARM64_HWCAPS = {1 << 1: "asimd", 1 << 7: "crc32", 1 << 20: "asimddp", 1 << 21: "sha512",
                1 << 22: "sve"}
# Flags with which llama.cpp repacks Q4_0 weights at load (AVX2 on x86, dotprod on ARM).
REPACKING = {"avx2", "asimddp"}


def meminfo_available(proc: Path = PROC) -> Optional[int]:
    """MemAvailable in bytes, or None where /proc/meminfo cannot be read."""
    try:
        with open(proc / "meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def own_cgroup(proc: Path = PROC) -> Optional[str]:
    """This process's cgroup v2 path ("/system.slice/typewriter.service"), or None."""
    try:
        for line in (proc / "self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:].strip() or "/"
    except OSError:
        pass
    return None


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _cgroup_chain(proc: Path, cgroup: Path):
    """The cgroup folders from this process's own up to the root."""
    own = own_cgroup(proc)
    if own is None:
        return
    folder = cgroup / own.lstrip("/")
    while True:
        yield folder
        if folder == cgroup or cgroup not in folder.parents:
            return
        folder = folder.parent


def memory_limit(proc: Path = PROC, cgroup: Path = CGROUP) -> Optional[int]:
    """The tightest memory.max on the way from this process's cgroup to the root, in bytes;
    None when there is none (or no cgroup v2)."""
    limits = [limit for folder in _cgroup_chain(proc, cgroup)
              if (limit := _read_int(folder / "memory.max")) is not None]
    return min(limits) if limits else None


def cgroup_headroom(proc: Path = PROC, cgroup: Path = CGROUP) -> Optional[int]:
    """What the cgroups still allow: min over the chain of memory.max - memory.current."""
    room = []
    for folder in _cgroup_chain(proc, cgroup):
        limit = _read_int(folder / "memory.max")
        if limit is None:
            continue
        current = _read_int(folder / "memory.current") or 0
        room.append(max(0, limit - current))
    return min(room) if room else None


def available_memory(proc: Path = PROC, cgroup: Path = CGROUP) -> int:
    """Bytes a new model may take now: min(MemAvailable, the cgroup's headroom)."""
    system = meminfo_available(proc)
    if system is None:
        try:
            system = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (OSError, ValueError):
            system = 0
    headroom = cgroup_headroom(proc, cgroup)
    if headroom is None:
        return system
    return min(system, headroom) if system else headroom


def hwcap() -> int:
    """getauxval(AT_HWCAP): the CPU features the kernel gave this process."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        libc.getauxval.argtypes = [ctypes.c_ulong]
        return int(libc.getauxval(AT_HWCAP))
    except (OSError, AttributeError):
        return 0


def cpu_flags(proc: Path = PROC, machine: Optional[str] = None,
              hwcaps: Optional[int] = None) -> Set[str]:
    """The CPU's feature names as /proc/cpuinfo spells them; from AT_HWCAP on arm64 when
    /proc/cpuinfo is hidden (empty on x86 then: its flags are not in AT_HWCAP)."""
    try:
        with open(proc / "cpuinfo") as f:
            words = set(f.read().split())
        if words:
            return words
    except OSError:
        pass
    if (machine or platform.machine()) in ("aarch64", "arm64"):
        bits = hwcap() if hwcaps is None else hwcaps
        return {name for bit, name in ARM64_HWCAPS.items() if bits & bit}
    return set()


def repacks_weights(flags: Optional[Set[str]] = None) -> bool:
    """Whether llama.cpp copies Q4_0 weights into its own layout at load on this CPU (AVX2,
    or ARM's dot product: the Pi 5); the file's pages are then held twice with mmap on."""
    return bool((cpu_flags() if flags is None else flags) & REPACKING)


def use_mmap(model_bytes: int = 0, flags: Optional[Set[str]] = None,
             limit: Optional[int] = None) -> bool:
    """Map the model file (its pages shared with the page cache, evictable) unless the CPU
    repacks the weights, which would then be held twice. Repacking or not, a model bigger
    than the service's memory limit is mapped: anonymous memory that size is killed at
    once, mapped pages can still be read back from the card."""
    if not repacks_weights(flags):
        return True
    limit = memory_limit() if limit is None else limit
    return bool(limit) and model_bytes > limit
