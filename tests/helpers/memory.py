"""What a process's memory is made of, read from /proc (Linux): for the tests of memory-mapped
scratch files and checkpoints."""

from __future__ import annotations

from pathlib import Path


def spill_mappings(directory: Path, pid: int | str = "self") -> int:
    """Distinct (deleted) files of ``directory``'s spill scratch mapped by process ``pid``."""
    prefix = f"{Path(directory).resolve()}/spill-"
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return len({ln.split()[-2] for ln in lines if prefix in ln and ln.endswith("(deleted)")})


def anon_bytes() -> int:
    """This process's RssAnon: resident memory not backed by a file."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")
