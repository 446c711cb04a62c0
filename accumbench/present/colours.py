"""One colour per effective batch size, the same in every figure of one page (learning curves, time, noise
scale, headline): a reader who learns that EBS 64 is green in one figure finds it green in all of them.

The hues are matplotlib's tab10 without its red and its grey: red marks the pick's star and margin, B_crit
and racing's prunes, and grey the lrs faded beside each EBS's best. Within one EBS, the series of other lrs
(`report --curves all`) keep its hue, lighter in turn. No matplotlib is needed: the colours are hex strings.
"""

from __future__ import annotations

from collections.abc import Iterable

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
LIGHTEST = 0.6  # the last of an EBS's series is this far toward white


def ebs_colours(sizes: Iterable[int]) -> dict[int, str]:
    """Each EBS's colour: the PALETTE in ascending EBS order (cycling past its end)."""
    return {ebs: PALETTE[i % len(PALETTE)] for i, ebs in enumerate(sorted({int(s) for s in sizes}))}


def shade(colour: str, index: int, count: int) -> str:
    """The `index`-th of `count` shades of one hex colour: the colour itself first, then lighter, toward white."""
    if count < 2 or index <= 0:
        return colour
    towards = LIGHTEST * min(index, count - 1) / (count - 1)
    rgb = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * towards):02x}" for c in rgb)
