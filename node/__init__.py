"""shardline: node package."""
