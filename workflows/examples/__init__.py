"""Example workflow packages (title ranking, payment fraud), their synthetic data and training."""
