"""Single-key commands from a terminal (e-stop, takeover) on a background thread.

    keys = KeyListener({"e": lambda: safety.estop("keyboard"), " ": ...})
    keys.start()          # does nothing unless the stream is a TTY (or `force`)
    ...
    keys.stop()

On a TTY the terminal goes into cbreak mode (keys arrive without Enter) and is restored on
`stop`. Tests pass any readable stream (a pipe) with ``force=True``.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
from collections.abc import Callable
from typing import IO, Any


class KeyListener:
    """Calls `bindings[key]()` for each key read from `stream` (default stdin)."""

    def __init__(self, bindings: dict[str, Callable[[], None]], stream: IO | None = None, force: bool = False):
        self.bindings = bindings
        self.stream = stream if stream is not None else sys.stdin
        self.force = force
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._saved_tty: list[Any] | None = None

    @property
    def active(self) -> bool:
        return self._thread is not None

    def start(self) -> bool:
        """Start listening; returns False (and does nothing) when the stream is not a TTY."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        if not self.force and not os.isatty(fd):
            return False
        if os.isatty(fd):
            import termios
            import tty

            self._saved_tty = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(fd,), name="keys", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._saved_tty is not None:
            import termios

            with contextlib.suppress(Exception):
                termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None

    def _run(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            data = os.read(fd, 32)
            if not data:  # end of stream
                return
            for key in data.decode(errors="ignore"):
                callback = self.bindings.get(key)
                if callback is not None:
                    callback()
