"""The broker-gateway command: serve the API, or validate / plan / apply / export manifests."""

import argparse
import asyncio
import hashlib
import json
import logging
import math
import os
import secrets
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pulsar.asyncio
import uvicorn
import yaml
from pydantic import ValidationError
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from broker_gateway import logs
from broker_gateway.auth import SCOPES, Authenticator, mint
from broker_gateway.errors import GatewayError, problem_for
from broker_gateway.manifests.audit import AuditLog, cli_actor
from broker_gateway.manifests.engine import ManifestEngine
from broker_gateway.manifests.loader import load_paths
from broker_gateway.manifests.render import plan_json, plan_text
from broker_gateway.manifests.units import parse_duration
from broker_gateway.pulsar.admin import PulsarAdmin
from broker_gateway.pulsar.service import connect
from broker_gateway.settings import Settings


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with TCP_NODELAY on every connection.

    asyncio sets it only on sockets it made as TCP ones; the listening socket uvicorn
    shares with its workers (GATEWAY_WORKERS > 1) is made without naming the protocol, so
    its connections kept Nagle's algorithm: an answer's body, written after its headers,
    waited for the client's delayed ACK, 40 ms a request (bench: the HTTP floor at 2
    workers served 719 requests/s instead of 9,974).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    try:
        Authenticator(settings)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not settings.auth_enabled:
        logging.getLogger(__name__).warning(
            "authentication is OFF (GATEWAY_AUTH_ENABLED=false): anyone may do anything"
        )
    workers = args.workers or settings.workers
    with _shared_by_workers(settings, workers):
        uvicorn.run(
            "broker_gateway.app:create_app",
            factory=True,
            host=args.host or settings.host,
            port=args.port or settings.port,
            workers=workers if workers > 1 else None,
            # Not uvloop: its libuv accepts one connection per loop iteration, so a busy
            # replica left new connections, and their requests, in the kernel's accept
            # queue for seconds, out of GATEWAY_MAX_IN_FLIGHT's sight, with /readyz among
            # them. asyncio accepts them at once: the excess is refused with 503 instead.
            loop="asyncio",
            http=HttpProtocol,
            log_level=settings.log_level,
            log_config=None,  # the format logs.configure set: uvicorn's lines too
            access_log=False,  # the app's own (see app._Observed): no query strings
            timeout_keep_alive=settings.keep_alive_s,
            # What is left of the grace once the delay has passed: open requests may finish.
            timeout_graceful_shutdown=max(
                settings.shutdown_grace_s - math.ceil(settings.shutdown_delay_s), 1
            ),
        )
    return 0


def _healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 when the local gateway answers /readyz with 200: a container's health check,
    for images without curl."""
    url = args.url or f"http://127.0.0.1:{settings.port}/readyz"
    try:
        status = httpx.get(url, timeout=args.timeout).status_code
    except httpx.HTTPError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


@contextmanager
def _shared_by_workers(settings: Settings, workers: int) -> Iterator[None]:
    """What several workers must share, in the environment they inherit: one receipt
    secret (a receipt works on every worker) and one metrics directory."""
    if workers == 1:
        yield
        return
    if settings.receipt_secret is None:
        os.environ["GATEWAY_RECEIPT_SECRET"] = secrets.token_urlsafe(32)
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # the operator's own
        yield
        return
    with tempfile.TemporaryDirectory(prefix="broker-gateway-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        yield


def _token(args: argparse.Namespace, settings: Settings) -> int:
    """Print a token for local use, or a new API key and its line for the keys file."""
    scopes = [s for part in args.scope or ["publish,consume"] for s in part.split(",") if s]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        print(f"error: unknown scope {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        expires_in_s = parse_duration(args.expires_in)
    except ValueError as exc:
        print(f"error: --expires-in: {exc}", file=sys.stderr)
        return 2
    tenants = args.tenant or ["*"]
    if args.api_key:
        key = secrets.token_urlsafe(32)
        entry = {
            "sha256": hashlib.sha256(key.encode()).hexdigest(),
            "principal": args.principal,
            "tenants": tenants,
            "scopes": scopes,
        }
        print(key)
        print("# for GATEWAY_AUTH_API_KEYS_FILE:", file=sys.stderr)
        print(yaml.safe_dump([entry], sort_keys=False).rstrip(), file=sys.stderr)
        return 0
    if args.private_key:
        signing_key: str | bytes = Path(args.private_key).read_bytes()
        algorithm = args.algorithm
    elif settings.auth_hs256_secret is not None:
        signing_key, algorithm = settings.auth_hs256_secret.get_secret_value(), "HS256"
    else:
        print("error: set GATEWAY_AUTH_HS256_SECRET or pass --private-key", file=sys.stderr)
        return 2
    print(
        mint(
            signing_key,
            principal=args.principal,
            tenants=tenants,
            scopes=scopes,
            expires_in_s=expires_in_s,
            audience=settings.auth_audience,
            algorithm=algorithm,
            issuer=settings.auth_issuer,
        )
    )
    return 0


@asynccontextmanager
async def _engine(settings: Settings) -> AsyncIterator[ManifestEngine]:
    """The engine over the configured clusters, with the audit trail. Its Pulsar client
    is made only when a record is written or read."""
    admins = {
        c.name: PulsarAdmin(c, timeout_s=settings.pulsar_operation_timeout_s)
        for c in settings.clusters
    }
    made: list[pulsar.asyncio.Client] = []

    def client() -> pulsar.asyncio.Client:
        if not made:
            made.append(connect(settings))
        return made[0]

    try:
        audit = AuditLog(admins[settings.data_cluster.name], client)
        yield ManifestEngine(settings.clusters, admins, audit)
    finally:
        for each in made:
            await each.close()
        for admin in admins.values():
            await admin.close()


async def _validate(args: argparse.Namespace, settings: Settings) -> int:
    raw = load_paths(args.paths)
    async with _engine(settings) as engine:
        manifests = engine.check(raw) if args.offline else await engine.validate(raw)
    print(f"valid: {len(manifests.documents())} objects in {', '.join(args.paths)}")
    return 0


async def _plan(args: argparse.Namespace, settings: Settings) -> int:
    raw = load_paths(args.paths)
    async with _engine(settings) as engine:
        plan = await engine.plan(raw, prune=args.prune)
    if args.json:
        print(json.dumps(plan_json(plan), indent=2))
    else:
        print(plan_text(plan, verbose=args.verbose), end="")
    return 2 if args.detailed_exitcode and plan.pending else 0


async def _apply(args: argparse.Namespace, settings: Settings) -> int:
    raw = load_paths(args.paths)
    async with _engine(settings) as engine:
        applied = await engine.apply(
            raw, allow_destructive=args.allow_destructive, prune=args.prune, actor=cli_actor()
        )
    if args.json:
        print(json.dumps({**plan_json(applied.plan), "steps": applied.steps}, indent=2))
        return 0
    print(plan_text(applied.plan), end="")
    if applied.steps:
        print(f"\nApplied {len(applied.steps)} change(s).")
    return 0


async def _export(args: argparse.Namespace, settings: Settings) -> int:
    async with _engine(settings) as engine:
        documents = await engine.export(args.tenant or [])
    if args.format == "json":
        text = json.dumps({"documents": documents}, indent=2) + "\n"
    else:
        text = yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=True)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        await asyncio.to_thread(Path(args.output).write_text, text, encoding="utf-8")
    return 0


async def _audit(args: argparse.Namespace, settings: Settings) -> int:
    async with _engine(settings) as engine:
        records = await engine.audit(args.tenant, args.limit)
    if args.json:
        print(json.dumps({"records": records}, indent=2))
        return 0
    for record in records:
        summary = record["plan"]["summary"] if record["plan"] else {}
        changes = ", ".join(f"{n} {action}" for action, n in summary.items() if n) or "-"
        error = record.get("error", {}).get("code", "")
        print(
            f"{record['time']}  {record['actor']}  {record['outcome']:<8} {record['digest'][:19]}"
            f"  {changes}  {error}".rstrip()
        )
    return 0


def _run(command: Callable[..., Coroutine[Any, Any, int]]) -> Callable[..., int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return asyncio.run(command(args, settings))
        except GatewayError as exc:
            items = [*exc.extra.get("errors", ()), *exc.extra.get("destructive", ())]
            headline = problem_for(exc).title if items else exc.detail
            print(f"error: {headline}", file=sys.stderr)
            for item in items:
                print(f"  - {item}", file=sys.stderr)
            return 1

    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker-gateway",
        description="An HTTP front door for Apache Pulsar. Settings come from GATEWAY_* "
        "variables; GATEWAY_CLUSTERS names the clusters manifests may use.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", help="listen address (default GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default GATEWAY_PORT or 8000)")
    serve.add_argument(
        "--workers", type=int, help="worker processes (default GATEWAY_WORKERS or 1)"
    )
    serve.set_defaults(run=_serve)

    healthcheck = commands.add_parser(
        "healthcheck", help="exit 0 when the gateway on GATEWAY_PORT is ready (for containers)"
    )
    healthcheck.add_argument("--url", help="what to ask (default http://127.0.0.1:PORT/readyz)")
    healthcheck.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    healthcheck.set_defaults(run=_healthcheck)

    def manifest_command(name: str, help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help)
        command.add_argument(
            "paths", nargs="*", default=["topics"], help="files or directories (default topics)"
        )
        return command

    validate = manifest_command("validate", "check manifests (live state too, unless --offline)")
    validate.add_argument("--offline", action="store_true", help="check without any cluster")
    validate.set_defaults(run=_run(_validate))

    plan = manifest_command("plan", "show what apply would change, per cluster")
    plan.add_argument("--prune", action="store_true", help="also delete what no manifest declares")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--verbose", action="store_true", help="list unchanged objects too")
    plan.add_argument(
        "--detailed-exitcode", action="store_true", help="exit 2 when there are changes"
    )
    plan.set_defaults(run=_run(_plan))

    apply = manifest_command("apply", "make the clusters match the manifests")
    apply.add_argument(
        "--allow-destructive",
        action="store_true",
        help="run changes that lose data (deletions, dropped replication, partition changes)",
    )
    apply.add_argument("--prune", action="store_true", help="delete what no manifest declares")
    apply.add_argument("--json", action="store_true", help="print plan and steps as JSON")
    apply.set_defaults(run=_run(_apply))

    audit = commands.add_parser("audit", help="show a tenant's audit trail of applies")
    audit.add_argument("--tenant", required=True, help="the tenant whose trail to show")
    audit.add_argument("--limit", type=int, default=100, help="the last this many (default 100)")
    audit.add_argument("--json", action="store_true", help="print the records as JSON")
    audit.set_defaults(run=_run(_audit))

    token = commands.add_parser("token", help="mint a token (or an API key) for local use")
    token.add_argument("--principal", default="developer", help="who the token names (sub)")
    token.add_argument(
        "--tenant", action="append", help="a tenant it may use (repeatable; default *: all)"
    )
    token.add_argument(
        "--scope",
        action="append",
        help="publish, consume, admin (repeatable or comma-separated; default publish,consume)",
    )
    token.add_argument("--expires-in", default="24h", help="lifetime, e.g. 30m, 24h, 7d")
    token.add_argument(
        "--private-key", help="sign with this PEM private key instead of the HS256 secret"
    )
    token.add_argument("--algorithm", choices=("RS256", "ES256"), default="RS256")
    token.add_argument(
        "--api-key", action="store_true", help="make an API key and its keys-file entry instead"
    )
    token.set_defaults(run=_token)

    export = commands.add_parser("export", help="write live state as manifests")
    export.add_argument("--tenant", action="append", help="tenant to export (repeatable)")
    export.add_argument("--format", choices=("yaml", "json"), default="yaml")
    export.add_argument("--output", "-o", default="-", help="file to write (default stdout)")
    export.set_defaults(run=_run(_export))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"GATEWAY_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        sys.exit(f"error: invalid settings: {problems}")
    logs.configure(settings, quiet=args.command != "serve")
    code = args.run(args, settings)
    # Done, Pulsar clients closed. pulsar-client can still abort the interpreter's teardown
    # ("terminate called without an active exception", exit 134 or 139; seen after `serve`
    # shut down cleanly and after `apply`), so the process leaves without one.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
