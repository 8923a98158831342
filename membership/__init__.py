"""shardline: membership package."""

from membership.native import extend as _extend

_extend(__name__, __path__)  # the compiled cores, when built and fresh (membership/native.py)
