"""Plain-text tables that never cut a value: what `report` prints in a terminal and into a pipe.

A rich table shrinks columns to the terminal and ends cut values with "…", so at 80 columns a wide
report read "m…" and "0.…". Here every value is printed whole. A table wider than the terminal is
split into column blocks, each repeating the key columns (the ones that name a row), as pandas does;
a pipe or a file has no width, so it gets one block and no line is ever broken.
"""

from __future__ import annotations

from collections.abc import Sequence

GAP = "  "


def render(headings: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[bool], keys: int = 0,
           width: int | None = None) -> str:
    """The table as lines of text. `headings` may span lines ('val acc\\nmean ± std'; bottom-aligned);
    `left[i]` aligns column i left, else right; the first `keys` columns are repeated in every block
    when the table is split to fit `width` (None: never split)."""
    parts = [heading.split("\n") for heading in headings]
    widths = [max([len(p) for p in part] + [len(row[i]) for row in rows]) for i, part in enumerate(parts)]
    blocks = _blocks(widths, keys, width)
    out = []
    for block in blocks:
        columns = [*range(keys), *block] if block else list(range(keys))
        height = max(len(parts[i]) for i in columns)
        for line in range(height):
            cells = []
            for i in columns:
                part = parts[i]
                text = part[line - (height - len(part))] if line >= height - len(part) else ""
                cells.append(_align(text, widths[i], left[i]))
            out.append(GAP.join(cells).rstrip())
        for row in rows:
            out.append(GAP.join(_align(row[i], widths[i], left[i]) for i in columns).rstrip())
        out.append("")
    return "\n".join(out[:-1]) + "\n"


def _align(text: str, width: int, left: bool) -> str:
    return text.ljust(width) if left else text.rjust(width)


def _blocks(widths: list[int], keys: int, width: int | None) -> list[list[int]]:
    """The non-key columns packed greedily into blocks no wider than `width` with the keys in front; a
    column too wide to fit even alone gets a block of its own (it overflows; it is not cut)."""
    rest = list(range(keys, len(widths)))
    if width is None or not rest:
        return [rest]
    key_width = sum(widths[:keys]) + len(GAP) * (keys - 1) if keys else 0
    blocks: list[list[int]] = [[]]
    used = key_width
    for i in rest:
        need = widths[i] + (len(GAP) if blocks[-1] or keys else 0)
        if blocks[-1] and used + need > width:
            blocks.append([])
            used = key_width
            need = widths[i] + (len(GAP) if keys else 0)
        blocks[-1].append(i)
        used += need
    return blocks
