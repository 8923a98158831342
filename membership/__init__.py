"""shardline: membership package."""
