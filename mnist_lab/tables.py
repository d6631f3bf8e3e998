"""Result tables: CSV for programs, Markdown and aligned text for people (rounded, blanks `-`)."""

from __future__ import annotations

import csv
from pathlib import Path


def cell(value) -> str:
    """A Markdown cell: floats to 4 significant digits, None as `-`."""
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def text_table(rows: list[dict], columns: list[str]) -> str:
    """The rows as aligned plain-text columns, for the terminal."""
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_table(rows: list[dict], csv_path: Path, md_path: Path) -> None:
    """The same rows as CSV (full precision, None as empty) and as a Markdown table."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
