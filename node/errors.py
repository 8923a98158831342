"""Errors a request can end in, each bound to the gRPC status the client sees.

Handlers raise these (or library errors that ``to_grpc_error`` maps); the service
layer turns every one into a ``GRPCError`` with a human message. Nothing else
reaches the client: an unexpected exception becomes INTERNAL with a reference to
the node log, never a traceback.
"""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError


class RequestError(Exception):
    """A request failed in a way the client should be told about."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_grpc(self) -> GRPCError:
        return GRPCError(self.status, self.message)


class InvalidArgument(RequestError):
    """Bad input; the message names the field."""

    status = Status.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
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


def error_for_status(status: str, message: str) -> RequestError:
    """A RequestError carrying a status that came back from a peer (by gRPC status name)."""
    if status == "INVALID_ARGUMENT":
        field, _, rest = message.partition(": ")
        return InvalidArgument(field, rest) if rest else InvalidArgument("request", message)
    return _BY_STATUS.get(status, Internal)(message)
