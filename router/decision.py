"""The decision: the model version that answers one request, the cell it counts under, and why.

`shardline.router.rules.evaluate` returns a `Decision`; an `ObjectiveConfig`
(`shardline.router.objectives`) keeps one ready, the answer for every user that falls through to its
default when it has no shadows. A value type and its fast builder: nothing here decides anything.

Imports: the standard library only (`shardline.router.objectives` and `shardline.router.rules`
import this).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_REASON = "default: no rule, experiment or canary applied"

_new_object = object.__new__


@dataclass(frozen=True)
class Decision:
    """The model chosen for one request, the cell it counts under, and why."""

    objective: str
    model_key: str
    cell: str
    shadows: tuple[str, ...]
    reason: str


def new_decision(
    objective: str, model_key: str, cell: str, shadows: tuple[str, ...], reason: str
) -> Decision:
    """``Decision(objective, model_key, cell, shadows, reason)``, the same object, built
    without the frozen dataclass ``__init__`` (an ``object.__setattr__`` call per field
    costs as much as the rest of ``evaluate``)."""
    decision = _new_object(Decision)
    fields = decision.__dict__
    fields["objective"] = objective
    fields["model_key"] = model_key
    fields["cell"] = cell
    fields["shadows"] = shadows
    fields["reason"] = reason
    return decision
