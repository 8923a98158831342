"""shardline: sim package."""
