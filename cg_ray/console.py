"""What the commands print for people: fixed-width tables."""

from __future__ import annotations

from cg_ray.taxonomy import LEVELS


def format_table(rows: dict[str, dict]) -> str:
    """Rows (name -> metrics) as a fixed-width table of top-1 and top-5 per level."""
    head = f"{'':<14}" + "".join(f"{lvl + ' @1':>14}{'@5':>8}" for lvl in LEVELS)
    lines = [head]
    for name, m in rows.items():
        lines.append(f"{name:<14}" + "".join(
            f"{m[f'{lvl}_top1']:>14.1f}{m[f'{lvl}_top5']:>8.1f}" for lvl in LEVELS))
    return "\n".join(lines)
