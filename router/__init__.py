"""shardline: router package."""
