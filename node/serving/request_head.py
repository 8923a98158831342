"""What both ends of the request path read from a request's head.

The ingress reads the head to decide; an executor serving a forwarded request (which
arrives without the ingress's reading) reads the same fields from the full request. Both
use these, so neither imports the other: the request context (``context_of``: what the
rules match on and what a workflow reads) and the label a request's objective is counted
under (``objective_label``: only the catalog's names, so no client can create a metric
series or a queue flow).
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from shardline.router.rules import RequestContext

UNKNOWN_OBJECTIVE = "_unknown"
"""The one label value requests for objectives outside the catalog are counted under."""


def context_of(message: Any) -> RequestContext:
    """The context of a ``PredictRequest`` or ``PredictRequestHead`` message."""
    c = message.context
    return RequestContext(
        user_id=c.user_id,
        country=c.country,
        device=c.device,
        surface=c.surface,
        attributes=dict(c.attributes),
    )


def objective_label(name: str, catalog: Container[str]) -> str:
    """``name`` when the catalog has it, else ``UNKNOWN_OBJECTIVE``."""
    return name if name in catalog else UNKNOWN_OBJECTIVE
