"""The planner's two failure kinds and the human-readable pieces of their messages.

`PlanError` means the input cannot work as written (fix the spec, the profile or the node file);
`Unschedulable` means the input is fine but the cluster has no room for it now (a retry may succeed).
The operator maps the first to a failed condition and the second to a pending one, so they must stay apart.
"""

from __future__ import annotations

from collections.abc import Iterable

GIB = 1024**3
MIB = 1024**2


class PlanError(ValueError):
    """Invalid input: the message names the field (e.g. `spec.split.stages`) and says how to fix it."""


class Unschedulable(RuntimeError):  # noqa: N818 - the condition's name, as Kubernetes says it
    """A valid job that does not fit the cluster's free GPUs now; the message says what is missing."""


def format_bytes(value: float) -> str:
    """Bytes as a person reads them: GiB above one GiB, MiB above one MiB, else bytes."""
    if value >= GIB:
        return f"{value / GIB:.1f} GiB"
    if value >= MIB:
        return f"{value / MIB:.1f} MiB"
    if value >= 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value:.0f} B"


def format_count(value: float) -> str:
    """Large counts in engineering form (1.2M, 3.4G) so tables stay narrow."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def plural(count: int, word: str, words: str | None = None) -> str:
    return f"{count} {word if count == 1 else (words or word + 's')}"


def list_some(items: Iterable[str], limit: int = 5) -> str:
    """The first `limit` items and how many more, so a message about 10,000 nodes stays one line."""
    shown: list[str] = []
    hidden = 0
    for item in items:
        if len(shown) < limit:
            shown.append(item)
        else:
            hidden += 1
    text = ", ".join(shown)
    return f"{text} and {hidden} more" if hidden else text
