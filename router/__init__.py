"""shardline: router package."""

if __name__ != "shardline.router":  # imported by its folder name from a checkout
    raise ImportError(
        "shardline installs under one import name: import shardline.router, not router "
        "(e.g. `from shardline.router import ...`)"
    )

from shardline.membership.native import extend as _extend

_extend(__name__, __path__)  # the compiled cores, when built and fresh (membership/native.py)
