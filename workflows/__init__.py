"""shardline: workflows package."""

if __name__ != "shardline.workflows":  # imported by its folder name from a checkout
    raise ImportError(
        "shardline installs under one import name: import shardline.workflows, not workflows "
        "(e.g. `from shardline.workflows import ...`)"
    )
