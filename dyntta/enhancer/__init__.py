"""enhancer."""
