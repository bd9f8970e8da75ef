"""Models: where weights come from, what they need, how a family talks."""
