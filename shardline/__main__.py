"""``python -m shardline``: the ``shardline`` command."""

from shardline.node.ops.cli import main

main()
