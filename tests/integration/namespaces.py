"""Whether this process may use Linux namespaces for a test (root, unshare(1), and the kernel's say)."""
from __future__ import annotations

import os
import shutil
import subprocess


def refusal(probe: list[str], what: str) -> str | None:
    """None when `unshare <probe>` works here, else why not (a reason for pytest.skip)."""
    if os.geteuid() != 0:
        return f"needs root ({what})"
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    done = subprocess.run(["unshare", *probe], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"{what} is not permitted here: {done.stderr.strip()}"
    return None
