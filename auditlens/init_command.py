"""`auditlens init`: inspect a model and its data, write a commented audit configuration, validate it, and print the
command that runs it."""

from __future__ import annotations

from auditlens.cli import app


@app.command("init")
def init() -> None:
    """Write an audit configuration for a model and its data (being built)."""
    raise NotImplementedError("auditlens init is being built")
