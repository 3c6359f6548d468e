"""Shutdown, seen from inside: an event set when the server is told to stop.

On SIGTERM or SIGINT uvicorn stops accepting connections and lets open requests finish for
up to GATEWAY_DRAIN_TIMEOUT_S, then cancels them. Requests end by themselves within that
time (a long poll within GATEWAY_MAX_WAIT_MS); a live stream never does, so streams watch
this event and end at once, and their clients resume with Last-Event-ID on another replica.
"""

import asyncio
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Draining:
    def __init__(self) -> None:
        self._started = asyncio.Event()

    def is_set(self) -> bool:
        return self._started.is_set()

    async def wait(self) -> None:
        await self._started.wait()

    def start(self) -> None:
        self._started.set()

    @contextmanager
    def on_signals(self) -> Iterator[None]:
        """Starts draining on SIGTERM or SIGINT, then hands the signal to the server's own
        handler. Signals reach the main thread only: elsewhere (an in-process test client)
        this watches nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def handle(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.start)
            server_handler = previous[signal.Signals(signum)]
            if callable(server_handler):
                server_handler(signum, frame)

        for sig in previous:
            signal.signal(sig, handle)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
