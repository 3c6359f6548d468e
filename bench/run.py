"""`make bench`: the gateway side by side with what a user would otherwise use, in one run.

On the same broker, interleaved round by round, with 100 B and 1 KiB payloads:

1. publish throughput: native pulsar-client (Go, batching on) vs the gateway's batched
   publish (100 messages a request; also as JSON records, to a topic without and with a
   JSON schema, to price the contract check) vs its single-message publish vs Pulsar's own WebSocket
   producer vs Pulsar's own REST produce endpoint, the HTTP paths at one concurrency; and,
   as references, pulsar-client for Python (what the gateway is built on) on its own, and
   the HTTP floor (bench/floor.py: the gateway's server stack answering without working);
2. publish latency at a fixed offered rate (open loop): half of what the gateway's
   single-message path sustained, offered to every single-message path alike, in
   interleaved rounds (the round with the median p99 is reported);
3. work queue: native Shared consumer receive + ack vs gateway pull + ack (10 and 100);
4. replay: native Reader vs gateway paged read vs SSE stream.

Load comes from bench/loadgen, a compiled Go program (pulsar-client-go for the native
paths), so the generator is not what is measured. Results: a table on stdout, JSON under
bench/results/ with the machine, versions and settings, and a PNG chart beside it.
"""

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from report import LATENCY_PATHS, PUBLISH_PATHS, chart, ratios, table, targets

ROOT = Path(__file__).resolve().parents[1]
LOADGEN = ROOT / "bench" / "loadgen" / "loadgen"
RESULTS = ROOT / "bench" / "results"
SERVICE_URL = "pulsar://127.0.0.1:6650"
ADMIN_URL = "http://127.0.0.1:8080"
WS_URL = "ws://127.0.0.1:8080"
NAMESPACE = "public/default"
# The gateway's publish paths: bench/loadgen's http-publish mode, and messages a request.
GATEWAY_MODES = {
    "gateway batched": ("gateway-json", "100"),
    "gateway batched records": ("gateway-record", "100"),
    "gateway batched records, JSON schema": ("gateway-record", "100"),
    "gateway single": ("gateway-raw", "1"),
}
# The JSON schema that the "gateway batched records" values conform to (bench/loadgen's
# RecordSchema): the same values, published with and without a contract to check.
RECORD_SCHEMA = json.dumps(
    {
        "type": "record",
        "name": "BenchRecord",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "n", "type": "long"},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "payload", "type": "string"},
        ],
    }
)
SECRET = "bench-only-signing-secret-of-at-least-32-bytes"

Result = dict[str, Any]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a gateway's worker processes)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return found


class CpuMeter:
    """CPU seconds spent by the broker and by the gateway (all its processes)."""

    def __init__(self, broker_pid: int, gateway_pid: int) -> None:
        self.broker_pid = broker_pid
        self.gateway_pids = [gateway_pid, *children(gateway_pid)]

    def snapshot(self, loadgen_pid: int) -> dict[str, float]:
        return {
            "broker": cpu_seconds(self.broker_pid),
            "gateway": sum(cpu_seconds(pid) for pid in self.gateway_pids),
            "loadgen": cpu_seconds(loadgen_pid),
        }


def per_request(result: Result, cpu: dict[str, float]) -> None:
    """Record the CPU a run cost, and the gateway's per request and per message."""
    result["cpu_s"] = {k: round(v, 3) for k, v in cpu.items()}
    for unit, count in (("request", result.get("requests")), ("message", result.get("messages"))):
        if count:
            result[f"gateway_us_per_{unit}"] = round(cpu["gateway"] / count * 1e6, 1)


class Bench:
    def __init__(self, options: argparse.Namespace, cpu: CpuMeter) -> None:
        self.options = options
        self.gateway = f"http://127.0.0.1:{options.port}"
        self.token = subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "broker-gateway"),
                "token",
                "--scope",
                "publish,consume,admin",
                "--expires-in",
                "1d",
            ],
            env={**os.environ, "GATEWAY_AUTH_HS256_SECRET": SECRET},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self.auth = ["-header", f"Authorization: Bearer {self.token}"]
        self.admin = httpx.Client(base_url=f"{ADMIN_URL}/admin/v2", timeout=30)
        self.http = httpx.Client(
            base_url=self.gateway, timeout=30, headers={"Authorization": f"Bearer {self.token}"}
        )
        self.cpu = cpu

    def run(self, *command: str, window: tuple[float, float] | None = None) -> Result:
        """Run a measuring program; its result is the JSON it prints, with the CPU the
        broker, the gateway and the program spent: within `window` (seconds after the start,
        and how long: a load's measurement window), else over the whole run."""
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started = time.monotonic()
        if window is None:
            before = self.cpu.snapshot(process.pid)
        else:
            time.sleep(max(0.0, started + window[0] - time.monotonic()))
            before = self.cpu.snapshot(process.pid)
            time.sleep(max(0.0, started + window[0] + window[1] - time.monotonic()))
            after = self.cpu.snapshot(process.pid)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:2])} failed: {stderr[-2000:]}")
        if window is None:
            after = self.cpu.snapshot(process.pid)
            spent = resource.getrusage(resource.RUSAGE_CHILDREN)
            after["loadgen"] = spent.ru_utime + spent.ru_stime - usage.ru_utime - usage.ru_stime
            before["loadgen"] = 0.0
        result: Result = json.loads(stdout)
        per_request(result, {k: after[k] - before[k] for k in after})
        return result

    def loadgen(
        self, subcommand: str, *args: str, window: tuple[float, float] | None = None
    ) -> Result:
        return self.run(str(LOADGEN), subcommand, *args, window=window)

    def topic(self, label: str) -> str:
        """A fresh, existing topic (Pulsar's REST produce does not create topics)."""
        slug = re.sub(r"[^A-Za-z0-9_.=:-]+", "-", label)
        name = f"{NAMESPACE}/bench-{slug}-{uuid.uuid4().hex[:8]}"
        self.admin.put(f"/persistent/{name}").raise_for_status()
        return name

    def timing(self, payload: int, rate: float = 0) -> list[str]:
        o = self.options
        return [
            "-duration",
            f"{o.duration}s",
            "-warmup",
            f"{o.warmup}s",
            "-payload",
            str(payload),
            "-concurrency",
            str(o.concurrency),
            "-rate",
            str(rate),
        ]

    # 1 and 2: publish ------------------------------------------------------------------

    def publish(self, path: str, payload: int, rate: float = 0) -> Result:
        topic = self.topic(path)
        timing = self.timing(payload, rate)
        # CPU is counted over the measurement window, as messages are.
        window = (self.options.warmup, self.options.duration)

        def load(*args: str) -> Result:
            return self.loadgen(*args, window=window)

        def run(*command: str) -> Result:
            return self.run(*command, window=window)

        if path == "native":
            return load(
                "native-publish",
                "-service-url",
                SERVICE_URL,
                "-topic",
                f"persistent://{topic}",
                *timing,
            )
        if path == "python client":
            return run(
                str(ROOT / ".venv" / "bin" / "python"),
                str(ROOT / "bench" / "pyclient.py"),
                "--service-url",
                SERVICE_URL,
                "--topic",
                f"persistent://{topic}",
                "--payload",
                str(payload),
                "--duration",
                str(self.options.duration),
                "--warmup",
                str(self.options.warmup),
            )
        if path == "pulsar websocket":
            return load(
                "ws-publish", "-url", f"{WS_URL}/ws/v2/producer/persistent/{topic}", *timing
            )
        if path == "pulsar rest":
            return load(
                "http-publish",
                "-mode",
                "pulsar-rest",
                "-batch",
                "1",
                "-url",
                f"{ADMIN_URL}/topics/persistent/{topic}",
                *timing,
            )
        url = f"{self.gateway}/v1/topics/{topic}/messages"
        if path in GATEWAY_MODES:
            if path.endswith("JSON schema"):
                self.admin.post(
                    f"/schemas/{topic}/schema",
                    json={"type": "JSON", "schema": RECORD_SCHEMA, "properties": {}},
                ).raise_for_status()
            mode, batch = GATEWAY_MODES[path]
            return load(
                "http-publish", "-mode", mode, "-batch", batch, "-url", url, *self.auth, *timing
            )
        if path == "http floor":
            floor = f"http://127.0.0.1:{self.options.port + 1}/v1/topics/{topic}/messages"
            return load("http-publish", "-mode", "gateway-raw", "-url", floor, *timing)
        raise AssertionError(f"unknown path {path}")

    # 3: work queue ---------------------------------------------------------------------

    def work_queue(self, payload: int) -> list[Result]:
        messages = str(self.options.queue_messages)
        topic = self.topic("queue")
        self.admin.put(
            f"/persistent/{topic}/subscription/native", json={"ledgerId": -1, "entryId": -1}
        ).raise_for_status()
        for batch in (10, 100):
            self.http.put(
                f"/v1/topics/{topic}/subscriptions/pull{batch}",
                json={"initial_position": "earliest", "ack_deadline_ms": 60_000},
            ).raise_for_status()
        self.fill(topic, payload, self.options.queue_messages)
        results = [
            self.loadgen(
                "native-consume",
                "-service-url",
                SERVICE_URL,
                "-topic",
                f"persistent://{topic}",
                "-subscription",
                "native",
                "-messages",
                messages,
                "-duration",
                "120s",
            )
        ]
        for batch in (10, 100):
            results.append(
                self.loadgen(
                    "http-pull",
                    "-url",
                    f"{self.gateway}/v1/topics/{topic}/subscriptions/pull{batch}",
                    *self.auth,
                    "-batch",
                    str(batch),
                    "-messages",
                    messages,
                    "-concurrency",
                    str(self.options.concurrency),
                    "-duration",
                    "120s",
                )
            )
        for result, name in zip(
            results, ("native", "gateway pull 10", "gateway pull 100"), strict=True
        ):
            result["path"] = name
        return results

    # 4: replay -------------------------------------------------------------------------

    def replay(self, payload: int) -> list[Result]:
        messages = str(self.options.replay_messages)
        topic = self.topic("replay")
        self.fill(topic, payload, self.options.replay_messages)
        url = f"{self.gateway}/v1/topics/{topic}"
        results = [
            self.loadgen(
                "native-read",
                "-service-url",
                SERVICE_URL,
                "-topic",
                f"persistent://{topic}",
                "-messages",
                messages,
                "-duration",
                "120s",
            ),
            self.loadgen(
                "http-read",
                "-url",
                f"{url}/messages",
                *self.auth,
                "-limit",
                "1000",
                "-messages",
                messages,
                "-duration",
                "120s",
            ),
            self.loadgen(
                "sse-read",
                "-url",
                f"{url}/stream?position=earliest",
                *self.auth,
                "-messages",
                messages,
                "-duration",
                "120s",
            ),
        ]
        for result, name in zip(results, ("native", "gateway read", "gateway sse"), strict=True):
            result["path"] = name
        return results

    def fill(self, topic: str, payload: int, messages: int) -> None:
        self.loadgen(
            "native-fill",
            "-service-url",
            SERVICE_URL,
            "-topic",
            f"persistent://{topic}",
            "-messages",
            str(messages),
            "-payload",
            str(payload),
        )


def median_latency(runs: list[Result]) -> Result:
    """The run with the median p99 latency (one stall on this shared machine can own a
    single run's tail), with every run's p50 and p99 kept."""
    ordered = sorted(runs, key=lambda r: r["latency_ms"]["p99"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rounds_p50_ms"] = [r["latency_ms"]["p50"] for r in runs]
    chosen["rounds_p99_ms"] = [r["latency_ms"]["p99"] for r in runs]
    return chosen


def median_result(runs: list[Result]) -> Result:
    """The run with the median throughput, with every run's throughput kept."""
    ordered = sorted(runs, key=lambda r: r["msgs_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rounds_msgs_per_s"] = [round(r["msgs_per_s"], 1) for r in runs]
    return chosen


def measure(bench: Bench, options: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"publish": {}, "latency": {}, "work_queue": {}, "replay": {}}
    for payload in options.payloads:
        runs: dict[str, list[Result]] = {p: [] for p in PUBLISH_PATHS}
        for round_ in range(options.rounds):
            # Interleaved, and in a rotated order each round, so drift hits every path alike.
            order = (
                PUBLISH_PATHS[round_ % len(PUBLISH_PATHS) :]
                + PUBLISH_PATHS[: round_ % len(PUBLISH_PATHS)]
            )
            for path in order:
                log(f"publish {payload} B, round {round_ + 1}: {path}")
                runs[path].append(bench.publish(path, payload))
        results["publish"][payload] = {p: median_result(r) for p, r in runs.items()}
        single = results["publish"][payload]["gateway single"]["msgs_per_s"]
        rate = max(100.0, round(single * options.load / 100) * 100 / 100)
        timed: dict[str, list[Result]] = {p: [] for p in LATENCY_PATHS}
        for round_ in range(options.rounds):
            order = LATENCY_PATHS[round_:] + LATENCY_PATHS[:round_]
            for path in order:
                log(f"latency {payload} B at {rate:.0f}/s, round {round_ + 1}: {path}")
                timed[path].append(bench.publish(path, payload, rate=rate))
        results["latency"][payload] = {
            "offered_per_s": rate,
            **{p: median_latency(r) for p, r in timed.items()},
        }
    payload = options.payloads[0]
    log(f"work queue, {options.queue_messages} messages of {payload} B")
    results["work_queue"][payload] = {r["path"]: r for r in bench.work_queue(payload)}
    log(f"replay, {options.replay_messages} messages of {payload} B")
    results["replay"][payload] = {r["path"]: r for r in bench.replay(payload)}
    return results


def machine() -> dict[str, Any]:
    def out(*args: str) -> str:
        """What a command prints (java -version prints to stderr)."""
        try:
            done = subprocess.run(args, capture_output=True, text=True, check=False)
        except OSError:
            return ""
        return done.stdout.strip() or done.stderr.strip()

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in out("lscpu").splitlines()
            if line.startswith("Model name")
        ),
        "",
    )
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "go": out("go", "version"),
        "java": out("java", "-version").split("\n", 1)[0],
    }


def versions() -> dict[str, str]:
    """Pulsar, the Python packages on the measured paths, and the load generator's."""
    pom = (ROOT / "local" / "pom.xml").read_text()
    found = re.search(r"<pulsar.version>([^<]+)</pulsar.version>", pom)
    packages = ("broker-gateway", "fastapi", "starlette", "uvicorn", "httptools")
    packages += ("pydantic", "orjson", "pulsar-client")
    go_mod = (ROOT / "bench" / "loadgen" / "go.mod").read_text()
    return {
        "pulsar": found.group(1) if found else "unknown",
        **{name: metadata.version(name) for name in packages},
        **{
            module.rsplit("/", 1)[-1]: version
            for module, version in re.findall(r"^\s+(\S+/\S+) (v\S+)$", go_mod, re.MULTILINE)
            if module.endswith(("pulsar-client-go", "coder/websocket"))
        },
    }


@contextmanager
def serving(
    command: list[str], env: dict[str, str], ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, once `ready_url` answers 200; stopped on leaving."""
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{command[0]} did not become ready")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=15)


def gateway(options: argparse.Namespace) -> AbstractContextManager[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "GATEWAY_PORT": str(options.port),
        "GATEWAY_CLUSTERS": json.dumps(
            [{"name": "east", "service_url": SERVICE_URL, "admin_url": ADMIN_URL}]
        ),
        "GATEWAY_AUTH_HS256_SECRET": SECRET,
        # Measure the data path, not the per-tenant limits.
        "GATEWAY_TENANT_REQUESTS_PER_S": "0",
        "GATEWAY_TENANT_BYTES_PER_S": "0",
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_WORKERS": str(options.workers),
    }
    command = [str(ROOT / ".venv" / "bin" / "broker-gateway"), "serve"]
    return serving(command, env, f"http://127.0.0.1:{options.port}/readyz")


def http_floor(options: argparse.Namespace) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """bench/floor.py on the gateway's server stack, one port up."""
    port = str(options.port + 1)
    command = [
        *(str(ROOT / ".venv" / "bin" / "uvicorn"), "floor:app", "--app-dir", "bench"),
        *("--port", port, "--workers", str(options.workers), "--lifespan", "off"),
        *(
            "--loop",
            "asyncio",
            "--http",
            "broker_gateway.cli:HttpProtocol",
            "--no-access-log",
            "--log-level",
            "warning",
        ),
    ]
    return serving(command, dict(os.environ), f"http://127.0.0.1:{port}/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", type=int, nargs="+", default=[100, 1024])
    parser.add_argument("--duration", type=float, default=8, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=2)
    # Three, so the median sets aside one disturbed round (this machine's runs vary).
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per path")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP and WebSocket clients")
    parser.add_argument("--load", type=float, default=50, help="latency load, percent")
    parser.add_argument("--queue-messages", type=int, default=20_000)
    parser.add_argument("--replay-messages", type=int, default=50_000)
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="gateway worker processes (default: one per core)",
    )
    options = parser.parse_args()

    started = datetime.now(UTC)
    broker_pid = int((ROOT / "local" / "data" / "east" / "pulsar.pid").read_text())
    with gateway(options) as served, http_floor(options):
        time.sleep(1)  # its worker processes are up
        results = measure(Bench(options, CpuMeter(broker_pid, served.pid)), options)
    measured = ratios(results)
    checks = targets(measured)
    sys.stdout.write(table(results, measured, checks))

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / started.strftime("%Y%m%dT%H%M%SZ")
    document = {
        "started": started.isoformat(),
        "machine": machine(),
        "versions": versions(),
        "settings": vars(options)
        | {"cpu_pinning": "none: broker, gateway and loadgen share both cores"},
        "results": results,
        "ratios": measured,
        "targets": checks,
    }
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2))
    chart(results, stem.with_suffix(".png"))
    log(f"\nwrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")


if __name__ == "__main__":
    main()
