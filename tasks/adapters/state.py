"""Where auditlens keeps state between runs on this machine, in a module of its own that imports nothing: the local
Prefect server's supervisor and the command's connection to the resident auditor need the folder before, or without,
anything heavy (tasks/adapters/settings.py costs about 0.4 s to import)."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """Where auditlens keeps state between runs on this machine (the local Prefect server, the webhook's replay store,
    the resident auditor's socket): $AUDITLENS_STATE_DIR, else ~/.auditlens. (AUDITLENS_HOME is another thing: the code
    folder deployments run from.)"""
    return Path(os.environ.get("AUDITLENS_STATE_DIR") or "~/.auditlens").expanduser()
