"""Replacing one marked section of benchmarks/RESULTS.md (the benchmarks' ``--write``)."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, begin: str, end: str, block: str) -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) in place of the section
    between those markers, or append it; a missing file starts with a title."""
    if path.exists():
        text = path.read_text(encoding="utf-8")
        i = text.find(begin)
        j = text.find(end, i) if i >= 0 else -1
        if j >= 0:
            text = text[:i] + block + text[j + len(end) :]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = f"# Benchmark results\n\n{block}\n"
    path.write_text(text, encoding="utf-8")
