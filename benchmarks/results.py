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
    """Replace in place (or append) the section `## title` with `body`, stamped with date and machine."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    stamp = f"_{datetime.date.today().isoformat()}, {machine()}_"
    section = f"## {title}\n\n{stamp}\n\n{body.strip()}\n"
    parts = text.split("\n## ")
    head, sections = parts[0], parts[1:]
    index = next((i for i, s in enumerate(sections) if s.startswith(title + "\n")), None)
    if index is None:
        sections.append(section[3:])
    else:  # in place: the file keeps its order across reruns
        sections[index] = section[3:]
    RESULTS.write_text(head.rstrip() + "\n\n" + "\n\n".join("## " + s.strip() for s in sections) + "\n")
