"""Kept so `from prunelab.cli import main` in existing scripts still works."""

from .app.cli import main

__all__ = ["main"]
