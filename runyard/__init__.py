"""Runyard's client side: the CLI, and later the in-run reporter."""
