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
import time
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


def wait_for_external(urls: Sequence[str], wait_s: float, models: Sequence[str]) -> None:
    """Wait until one of the external Tritons serves ``models`` (URL rule: ``serve.triton.urls``; a bad URL
    is an error). Not being ready yet is a warning, not a failure: the gateway answers 503 until one is."""
    from serve.triton import TritonError, connect, parse_triton_url

    for url in urls:
        parse_triton_url(url)
    deadline = time.monotonic() + wait_s
    while True:
        for url in urls:
            try:
                connect(url, models=models, timeout=0)
                return
            except TritonError as exc:
                problem = exc
        if time.monotonic() >= deadline:
            log.warning("%s; starting anyway (/readyz reports 503 until a replica is ready)", problem)
            return
        time.sleep(0.5)


def serve(settings: Settings, *, triton_log: str | None = None, log_level: str = "info") -> None:
    config = dict(host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=10)
    models = [settings.ensemble_model, settings.recognizer_model, settings.enhancer_model]
    if settings.triton_url:
        from serve.triton import split_urls

        urls_given = split_urls(settings.triton_url)
        wait_for_external(urls_given, 30.0, models)
        uvicorn.run(create_app(settings, urls_given), **config)
        return
    from serve.triton import TritonServer, TritonSupervisor

    log.info("starting the bundled Triton on %s", settings.model_repository)
    # uvicorn handles SIGINT/SIGTERM (graceful shutdown); the context manager then stops Triton's
    # process group, also on errors, so Ctrl-C leaves no tritonserver or python-backend stub behind.
    # The supervisor restarts a Triton that dies (same ports, bounded back-off); /readyz is 503 meanwhile.
    with TritonSupervisor(TritonServer(settings.model_repository, log_file=triton_log)) as urls:
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
