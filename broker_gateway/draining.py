"""Shutdown, seen from inside: an event set the moment the server is told to stop.

On SIGTERM or SIGINT the event is set at once: /readyz answers 503, live streams end with a
`reconnect` event (their clients resume with Last-Event-ID on another replica), and long
polls end with what they have. After GATEWAY_SHUTDOWN_DELAY_S, so that load balancers have
noticed, the signal goes on to uvicorn, which stops accepting connections and lets open
requests finish within what is left of GATEWAY_SHUTDOWN_GRACE_S.
"""

import asyncio
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Draining:
    def __init__(self) -> None:
        self.event = asyncio.Event()

    def is_set(self) -> bool:
        return self.event.is_set()

    @contextmanager
    def on_signals(self, delay_s: float) -> Iterator[None]:
        """Starts draining on SIGTERM or SIGINT, and hands the signal to the server's own
        handler `delay_s` later (at once for a second signal). Signals reach the main
        thread only: elsewhere (an in-process test client) this watches nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def handle(signum: int, frame: FrameType | None) -> None:
            server_handler = previous[signal.Signals(signum)]
            if not callable(server_handler):
                return
            if self.event.is_set():
                server_handler(signum, frame)
                return
            loop.call_soon_threadsafe(self.event.set)
            loop.call_soon_threadsafe(loop.call_later, delay_s, server_handler, signum, frame)

        for sig in previous:
            signal.signal(sig, handle)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
