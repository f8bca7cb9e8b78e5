"""Worker processes that end with the process that started them.

A process pool's workers wait on a queue whose both ends they hold themselves, so a parent killed
outright (SIGKILL, out of memory) would leave them waiting for ever. `exit_with_parent`, called first in
a worker, starts a thread that ends the worker as soon as its parent is gone.
"""

from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 0.5


def exit_with_parent(poll_seconds: float = POLL_SECONDS) -> None:
    """End this process (exit status 1) within `poll_seconds` of its parent's death: the parent is gone
    when this process's parent id changes (the orphan is adopted by another process)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="npva-exit-with-parent", daemon=True).start()
