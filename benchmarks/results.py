"""Writes one section of benchmarks/RESULTS.md, replacing the previous run's."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nEach section is written by the script named in it; rerun it to refresh.\n"


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {platform.machine()}, Python {platform.python_version()}"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the section `## title` with `body`, stamped with date and machine."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    stamp = f"_{datetime.date.today().isoformat()}, {machine()}_"
    section = f"## {title}\n\n{stamp}\n\n{body.strip()}\n"
    parts = text.split("\n## ")
    head, sections = parts[0], parts[1:]
    sections = [s for s in sections if not s.startswith(title + "\n")]
    sections.append(section[3:])
    RESULTS.write_text(head.rstrip() + "\n\n" + "\n\n".join("## " + s.strip() for s in sections) + "\n")
