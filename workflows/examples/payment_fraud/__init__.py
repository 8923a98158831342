"""Payment-fraud example packages (one directory per version)."""
