"""Ctrl-C as a request to stop at the next safe point, not in the middle of a step."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def deferred_stop():
    """Turn the first SIGINT/SIGTERM into ``flag["stop"] = True`` for a loop to read between steps.

    Training would otherwise stop with half-updated weights and lose every step since its
    last save; a search would lose the sequences it has scored. The second signal acts as usual.
    Off the main thread (where signals cannot be caught) the flag simply stays False.
    """
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(sig, frame):
        flag["stop"] = True
        signal.signal(sig, previous[sig])

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
