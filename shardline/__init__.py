"""shardline: a model-serving cluster behind one gRPC API.

Everything installs under this one import name: ``shardline.node`` (the process),
``shardline.router`` and ``shardline.membership`` (the pure cores), ``shardline.workflows``
(the workflow package format and SDK) and ``shardline.sim`` (the chaos simulator). In a
checkout the subpackages are the repository's top-level folders (``shardline/`` links to
them); a wheel holds them inside ``shardline/``.

The public API, importable from the top::

    from shardline import Client, SmartClient          # the client SDK
    from shardline import grpc_target, grpc_channel_options   # any grpcio client
    from shardline.workflows import sdk                 # what a workflow package imports
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "Client",
    "PredictError",
    "Prediction",
    "SmartClient",
    "grpc_channel_options",
    "grpc_target",
    "service_config",
]

if TYPE_CHECKING:
    from shardline.node.sdk.client import Client, PredictError, Prediction, SmartClient
    from shardline.node.sdk.targets import grpc_channel_options, grpc_target, service_config


def __getattr__(name: str) -> Any:
    """The client SDK, imported on first use (``import shardline.sim`` stays light)."""
    if name in __all__:
        from shardline.node.sdk import client, targets

        return getattr(client if hasattr(client, name) else targets, name)
    raise AttributeError(f"module 'shardline' has no attribute {name!r}")
