"""shardline: membership package."""

if __name__ != "shardline.membership":  # imported by its folder name from a checkout
    raise ImportError(
        "shardline installs under one import name: import shardline.membership, not membership "
        "(e.g. `from shardline.membership import ...`)"
    )

from shardline.membership.native import extend as _extend

_extend(__name__, __path__)  # the compiled cores, when built and fresh (membership/native.py)
