"""``python -m serve``: the bundled Triton with ``model_repository/`` plus the gateway on 127.0.0.1:8000.

Examples::

    python -m serve                                   # bundled Triton + gateway, Ctrl-C stops both
    python -m serve --triton-url http://triton:8000   # an external Triton (gRPC on its port + 1)
    DYNTTA_API_KEY=secret python -m serve --host 0.0.0.0 --port 8080

Every flag has a ``DYNTTA_*`` environment variable (see ``--help``). The gateway reads input size, labels
and versions from the models Triton serves, so a new export needs no gateway change.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import uvicorn

from serve.app import create_app
from serve.config import Settings, add_arguments, settings_from_args

log = logging.getLogger("serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("--triton-log", default=None, help="also write the bundled Triton's log to this file")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def external_grpc_address(url: str, wait_s: float, models: Sequence[str]) -> str:
    """gRPC host:port of an external Triton given by its HTTP or ``grpc://`` URL (Triton's standard port
    layout). Not being ready yet is a warning, not a failure: the gateway answers 503 until it is."""
    from serve.triton import TritonError, TritonURLs, connect

    try:
        return connect(url, models=models, timeout=wait_s).grpc_address
    except TritonError as exc:
        log.warning("%s; starting anyway (/readyz reports 503 until it is ready)", exc)
    return TritonURLs.from_url(url).grpc_address


def serve(settings: Settings, *, triton_log: str | None = None, log_level: str = "info") -> None:
    config = dict(host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=10)
    models = [settings.ensemble_model, settings.recognizer_model, settings.enhancer_model]
    if settings.triton_url:
        address = external_grpc_address(settings.triton_url, 30.0, models)
        uvicorn.run(create_app(settings, address), **config)
        return
    from serve.triton import TritonServer

    log.info("starting the bundled Triton on %s", settings.model_repository)
    # uvicorn handles SIGINT/SIGTERM (graceful shutdown); the context manager then stops Triton's
    # process group, also on errors, so Ctrl-C leaves no tritonserver or python-backend stub behind.
    with TritonServer(settings.model_repository, log_file=triton_log) as urls:
        log.info("Triton ready: HTTP %s, gRPC %s, metrics %s", urls.http_url, urls.grpc_url, urls.metrics_url)
        uvicorn.run(create_app(settings, urls.grpc_address), **config)
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_from_args(args)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("binding %s without an API key: POST endpoints are open to the network", settings.host)
    from serve.triton import TritonError

    try:
        serve(settings, triton_log=args.triton_log, log_level=args.log_level)
    except TritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
