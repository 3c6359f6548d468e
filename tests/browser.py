"""A minimal driver for a headless Chromium, spoken to over the DevTools protocol's pipe.

Tests that need a real browser (the page the gateway serves, fetch() with its CORS rules,
streams read by JavaScript) use this instead of Playwright or Selenium:

- Playwright needs its own build of Chromium, downloaded from its CDN at install time, and
  this machine reaches nothing but package registries; Debian's `chromium-headless-shell`
  (what `make test` installs) is the browser we can have.
- `--remote-debugging-pipe` makes Chromium read commands on file descriptor 3 and write
  answers on 4: no port to pick or to collide with, no WebSocket client to install, nothing
  for another process on the machine to connect to. Messages are JSON, each ended by a NUL.
- The protocol is small for what tests need: open a tab, wait for its load event, evaluate
  JavaScript. The standard library covers it.

One thread drives a Browser: nothing reads Chromium's pipe in the background. Events (console
messages, load events) are collected whenever the driver waits for an answer, so a Page's
`console` is up to date after each `evaluate`.

    with Browser() as browser:
        page = browser.page("http://127.0.0.1:8000/")
        assert page.evaluate("document.title") == "broker-gateway"
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import IO, Any

# The file `make test` installs (apt package chromium-headless-shell); $CHROMIUM overrides it.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium-headless-shell")

FLAGS = [
    "--headless",
    "--remote-debugging-pipe",
    "--no-sandbox",  # the sandbox refuses to start as root, which tests here often are
    "--disable-gpu",
    "--no-first-run",
    "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm
    "--disable-background-networking",  # no component updates or safe-browsing lookups
    "--disable-component-update",
    "--disable-extensions",
    "--mute-audio",
]

Message = dict[str, Any]


class BrowserError(RuntimeError):
    """Chromium did not start, did not answer in time, died, or refused a command."""


class Browser:
    """A headless Chromium on its own temporary profile, closed (and its profile removed) on
    exit from the `with` block."""

    def __init__(self, executable: str = CHROMIUM, *, timeout_s: float = 30) -> None:
        if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
            raise BrowserError(
                f"no Chromium at {executable}: `make test` installs it "
                "(Debian package chromium-headless-shell)"
            )
        self._profile = tempfile.mkdtemp(prefix="browser-profile-")
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self._buffer = b""
        self._next_id = 0
        self._responses: dict[int, Message] = {}
        self._pages: dict[str, Page] = {}
        self._closed = False
        try:
            self._process = self._launch(executable)
        except BaseException:
            self._stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        try:
            self.version: str = self.send("Browser.getVersion", timeout_s=timeout_s)["product"]
        except BaseException:
            self.close()
            raise

    def _launch(self, executable: str) -> subprocess.Popen[bytes]:
        commands_r, self._commands = os.pipe()  # we write commands, Chromium reads them on 3
        self._answers, answers_w = os.pipe()  # Chromium writes on 4, we read
        # Copies above 4, so that putting one on 3 never overwrites the other.
        child_r = fcntl.fcntl(commands_r, fcntl.F_DUPFD_CLOEXEC, 5)
        child_w = fcntl.fcntl(answers_w, fcntl.F_DUPFD_CLOEXEC, 5)

        def give_chromium_3_and_4() -> None:  # runs in the child, between fork and exec
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        try:
            # pass_fds keeps 3 and 4 open through close_fds. Both exist in this process at this
            # point (the four pipe ends above took the lowest free numbers), which Popen needs.
            return subprocess.Popen(
                [executable, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                pass_fds=(3, 4),
                preexec_fn=give_chromium_3_and_4,
                # Its own process group: Debian's /usr/bin entry is a shell script that runs
                # the real binary as a child, and Chromium starts helpers; a kill reaches all.
                start_new_session=True,
            )
        except BaseException:
            os.close(self._commands)
            os.close(self._answers)
            raise
        finally:
            for fd in (commands_r, answers_w, child_r, child_w):
                os.close(fd)

    # --- the protocol ----------------------------------------------------------------------

    def send(
        self,
        method: str,
        params: Message | None = None,
        *,
        session_id: str | None = None,
        timeout_s: float = 30,
    ) -> Message:
        """Send one command and return its result; raise BrowserError if Chromium answers
        with an error or not at all within timeout_s."""
        self._next_id += 1
        command_id = self._next_id
        message: Message = {"id": command_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        self._write(json.dumps(message).encode() + b"\0")
        self.wait_until(lambda: command_id in self._responses, f"an answer to {method}", timeout_s)
        response = self._responses.pop(command_id)
        if "error" in response:
            raise BrowserError(f"{method} failed: {response['error']}")
        result: Message = response.get("result", {})
        return result

    def wait_until(self, condition: Callable[[], bool], what: str, timeout_s: float) -> None:
        """Read Chromium's messages (answers and events) until condition() holds."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"waited {timeout_s:g}s for {what} in vain{self._stderr_tail()}")
            readable, _, _ = select.select([self._answers], [], [], left)
            if not readable:
                continue
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                code = self._process.poll()
                raise BrowserError(
                    f"Chromium closed its pipe (exit code {code}) while we waited for {what}"
                    f"{self._stderr_tail()}"
                )
            self._buffer += chunk
            *messages, self._buffer = self._buffer.split(b"\0")
            for raw in messages:
                self._dispatch(json.loads(raw))

    def _dispatch(self, message: Message) -> None:
        if "id" in message:
            self._responses[message["id"]] = message
            return
        page = self._pages.get(message.get("sessionId", ""))
        if page is not None:
            page._on_event(message["method"], message.get("params", {}))

    def _write(self, data: bytes) -> None:
        if self._closed:
            raise BrowserError("the browser is closed")
        try:
            while data:
                data = data[os.write(self._commands, data) :]
        except BrokenPipeError:
            raise BrowserError(f"Chromium is gone{self._stderr_tail()}") from None

    def _stderr_tail(self, lines: int = 30) -> str:
        # pread: Chromium writes through the same open file, so its offset must not move.
        fd = self._stderr.fileno()
        text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
        tail = text.splitlines()[-lines:]
        return "\nChromium's stderr, last lines:\n  " + "\n  ".join(tail) if tail else ""

    # --- tabs --------------------------------------------------------------------------------

    def page(self, url: str, *, timeout_s: float = 30) -> Page:
        """Open a new tab at url and return it once its load event has fired."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = Page(self, target, session["sessionId"])
        self._pages[page.session_id] = page
        try:
            page.send("Page.enable")
            page.send("Page.setLifecycleEventsEnabled", {"enabled": True})
            page.send("Runtime.enable")
            page.navigate(url, timeout_s=timeout_s)
        except BrowserError:
            if not self._closed and self._process.poll() is None:
                page.close()
            raise
        return page

    # --- shutdown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Ask Chromium to exit, kill it if it has not within 5 s, remove the profile."""
        if self._closed:
            return
        try:
            self._write(json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        except BrowserError:
            pass  # already gone: wait() below collects it
        self._closed = True
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            # Not reaped yet, so the group id is still ours to kill.
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        for fd in (self._commands, self._answers):
            os.close(fd)
        self._stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Page:
    """One tab, attached through a flat session: its commands carry the session id."""

    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.console: list[str] = []  # "log: text", "error: text", ... from console.* calls
        self.errors: list[str] = []  # exceptions nothing caught (Runtime.exceptionThrown)
        self._loaded: set[str] = set()  # loader ids (one per navigation) whose load event fired

    def send(self, method: str, params: Message | None = None, *, timeout_s: float = 30) -> Message:
        return self.browser.send(method, params, session_id=self.session_id, timeout_s=timeout_s)

    def navigate(self, url: str, *, timeout_s: float = 30) -> None:
        """Go to url and wait for its load event.

        Page.loadEventFired does not say which document loaded, and the tab's first
        about:blank may still send one; the lifecycle event "load" carries the loader id that
        Page.navigate returns, so it is this navigation's load we wait for."""
        result = self.send("Page.navigate", {"url": url}, timeout_s=timeout_s)
        if "errorText" in result:
            raise BrowserError(f"could not open {url}: {result['errorText']}")
        loader = result.get("loaderId")
        if loader is None:  # a move within the document (#fragment): nothing loads
            return
        self.browser.wait_until(lambda: loader in self._loaded, f"load event for {url}", timeout_s)

    def evaluate(self, expression: str, timeout_s: float = 30) -> Any:
        """The value of a JavaScript expression, awaited if it is a promise, as JSON would
        carry it (undefined is None). AssertionError with the JavaScript exception if it throws
        or the promise rejects."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout_s=timeout_s,
        )
        if "exceptionDetails" in result:
            raise AssertionError(
                f"JavaScript threw: {_exception_text(result['exceptionDetails'])}\n"
                f"  evaluating: {expression}"
            )
        return result["result"].get("value")

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target_id})
        self.browser._pages.pop(self.session_id, None)

    def _on_event(self, method: str, params: Message) -> None:
        if method == "Page.lifecycleEvent" and params["name"] == "load":
            self._loaded.add(params["loaderId"])
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(_remote_object_text(arg) for arg in params.get("args", []))
            self.console.append(f"{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            self.errors.append(_exception_text(params["exceptionDetails"]))


def _remote_object_text(remote: Message) -> str:
    if "value" in remote:
        value = remote["value"]
        return value if isinstance(value, str) else json.dumps(value)
    return str(remote.get("description", remote.get("unserializableValue", remote["type"])))


def _exception_text(details: Message) -> str:
    """'Error: boom\\n    at ...' for an Error, the value for a thrown string or number."""
    exception = details.get("exception")
    if exception is None:
        return str(details.get("text", "unknown exception"))
    return _remote_object_text(exception)


@contextmanager
def static_site(files: dict[str, tuple[str, str]]) -> Iterator[str]:
    """A web site on 127.0.0.1 (a port of its own, so an origin of its own) serving `files`
    (path -> (content type, text)); 404 for any other path. Yields its origin."""

    class Files(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in files:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            content_type, text = files[self.path]
            body = text.encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("content-type", f"{content_type}; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # no access log on the test's stderr

    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
