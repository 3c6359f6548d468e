"""The broker-gateway command."""

import argparse
import logging

import uvicorn

from broker_gateway.settings import Settings


def _serve(args: argparse.Namespace) -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The C++ client logs every connection at INFO; keep its warnings and errors.
    logging.getLogger("pulsar.client").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uvicorn.run(
        "broker_gateway.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="broker-gateway", description="An HTTP front door for Apache Pulsar."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP API (settings from GATEWAY_*)")
    serve.add_argument("--host", help="listen address (default GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default GATEWAY_PORT or 8000)")
    serve.set_defaults(run=_serve)
    args = parser.parse_args(argv)
    args.run(args)
