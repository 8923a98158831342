"""shardline: workflows package."""
