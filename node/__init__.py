"""shardline.node: the node process, in rooms (each room's ``__init__`` says what it holds and
what it may import): ``serving`` (the request path on one node), ``cluster`` (the shell
around it), ``observability``, ``sdk`` (the client SDK) and ``ops`` (the command line and
operator tools). Imports flow one way: ops -> cluster -> serving -> observability -> sdk ->
the cores (``shardline.router``, ``shardline.membership``, ``shardline.workflows``)."""

if __name__ != "shardline.node":  # imported by its folder name from a checkout
    raise ImportError(
        "shardline installs under one import name: import shardline.node, not node "
        "(e.g. `from shardline.node import ...`)"
    )
