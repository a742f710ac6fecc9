"""`python -m auditlens ...`: the same command as the `auditlens` script."""

from auditlens.cli import app

app(prog_name="auditlens")
