"""Errors a request can end in, each bound to the gRPC status the client sees.

Handlers raise these (or library errors that ``to_grpc_error`` maps); the service
layer turns every one into a ``GRPCError`` with a human message. Nothing else
reaches the client: an unexpected exception becomes INTERNAL with a reference to
the node log, never a traceback.

Client-supplied strings (objective names, model keys, input names, dtypes, ids) reach
messages, log lines and labels only through ``clip``: at most ``ECHO_CHARS`` of them,
escaped. Every message is also cut to ``MAX_MESSAGE_CHARS`` as a last bound: an error
message travels in the ``grpc-message`` HTTP/2 header, which hpack encodes on the event
loop in time that grows with the square of its length, and an oversized header breaks
the node-to-node connection that relays it.
"""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError

ECHO_CHARS = 64
"""Characters of a client-supplied string that an error message or log line repeats."""
MAX_MESSAGE_CHARS = 1024
"""Longest error message a node sends (to a client or a peer) or relays."""


def clip(value: object, limit: int = ECHO_CHARS, *, quote: bool = True) -> str:
    """A client-supplied value quoted for a message or log line: ``repr`` of at most ``limit``
    characters of it (control characters, quotes and backslashes escaped, so it can neither
    end the line nor fake another field), with the full length named when it was cut.
    ``quote=False`` leaves out the quotes (for a name inside a field path)."""
    text = value if isinstance(value, str) else str(value)
    shown = repr(text[:limit])
    if not quote:
        shown = shown[1:-1]
    if len(text) <= limit:
        return shown
    return f"{shown}… ({len(text)} characters)"


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters (an ellipsis and the full length mark a cut)."""
    if len(message) <= limit:
        return message
    note = f"… ({len(message)} characters)"
    return message[: max(0, limit - len(note))] + note


class RequestError(Exception):
    """A request failed in a way the client should be told about (message bounded)."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str) -> None:
        message = bounded(message)
        super().__init__(message)
        self.message = message

    def to_grpc(self) -> GRPCError:
        return GRPCError(self.status, self.message)


class InvalidArgument(RequestError):
    """Bad input; the message names the field (``field`` is ours, never the client's:
    a field that repeats a client-supplied name passes it through ``clip`` first)."""

    status = Status.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        field = bounded(field, 2 * ECHO_CHARS + 32)
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(RequestError):
    status = Status.NOT_FOUND


class Unavailable(RequestError):
    status = Status.UNAVAILABLE


class Overloaded(RequestError):
    status = Status.RESOURCE_EXHAUSTED


class DeadlineExceeded(RequestError):
    status = Status.DEADLINE_EXCEEDED


class PermissionDenied(RequestError):
    status = Status.PERMISSION_DENIED


class Internal(RequestError):
    status = Status.INTERNAL


_BY_STATUS: dict[str, type[RequestError]] = {
    "NOT_FOUND": NotFound,
    "UNAVAILABLE": Unavailable,
    "CONNECTION": Unavailable,
    "RESOURCE_EXHAUSTED": Overloaded,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "PERMISSION_DENIED": PermissionDenied,
}


def check_length(field: str, value: str, limit: int) -> None:
    """INVALID_ARGUMENT when an identifier is longer than ``limit`` (checked before any work)."""
    if len(value) > limit:
        raise InvalidArgument(field, f"longer than {limit} characters ({len(value)})")


def error_for_status(status: str, message: str) -> RequestError:
    """A RequestError carrying a status that came back from a peer (by gRPC status name);
    the message is bounded whatever the peer sent."""
    message = bounded(message)
    if status == "INVALID_ARGUMENT":
        field, _, rest = message.partition(": ")
        return InvalidArgument(field, rest) if rest else InvalidArgument("request", message)
    return _BY_STATUS.get(status, Internal)(message)
