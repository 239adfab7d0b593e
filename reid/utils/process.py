"""Whether a process on this host still exists: how abandoned work (temp folders, sweep trials) is recognised."""

from __future__ import annotations

import os


def process_exists(pid: int) -> bool:
    """True while `pid` names a process on this host, including one owned by another user."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
