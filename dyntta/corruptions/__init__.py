"""corruptions."""
