"""Title-ranking example packages (one directory per version)."""
