"""Which backbones a run measures, and the order its interleaved runs go in."""

from __future__ import annotations

from collections.abc import Sequence


def resolve_backbones(
    requested: Sequence[str], known: Sequence[str], extra: Sequence[str] = ()
) -> list[str]:
    """The backbones to measure: ``requested`` in order, or every known one for ``all``.

    Args:
        requested: The names asked for (duplicates are dropped), or ``["all"]``.
        known: Every registered backbone name.
        extra: Other names that may be asked for (keras-hub backbones), not part of ``all``.

    Returns:
        The names to measure, each once, in the order asked.

    Raises:
        ValueError: For an unknown name, or none; the message lists the known ones.
    """
    if list(requested) == ["all"]:
        return list(known)
    unknown = [name for name in requested if name not in known and name not in extra]
    if unknown:
        raise ValueError(
            f"Unknown backbone{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
            f"; known: {', '.join([*known, *extra])} (or all)."
        )
    if not requested:
        raise ValueError(f"No backbone given; known: {', '.join(known)} (or all).")
    return list(dict.fromkeys(requested))


def rotated(items: Sequence, repeat: int) -> list:
    """``items`` rotated by ``repeat``: A B C, then B C A, then C A B (interleaved runs)."""
    if not items:
        return []
    shift = repeat % len(items)
    return list(items[shift:]) + list(items[:shift])
