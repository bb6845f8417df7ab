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
import signal
import sys
import time
from collections.abc import Sequence

import uvicorn

from dyntta.cli import ArgumentParser, UsageError
from serve.app import create_app
from serve.config import Settings, add_arguments, settings_from_args
from serve.observability import configure_logging

log = logging.getLogger("serve")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m serve", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--triton-log", default=None, help="also write the bundled Triton's log to this file")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log verbosity"
    )
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


class Terminated(Exception):
    """SIGTERM, raised in the main thread once uvicorn has drained, so that every ``with`` unwinds (Triton's
    process group stopped, temporary directories removed) exactly as after Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


class _Gateway(uvicorn.Server):
    """uvicorn's server, which also tells the app it is draining: new requests get 503 + Retry-After."""

    def handle_exit(self, sig: int, frame: object) -> None:
        admission = getattr(getattr(self.config.app, "state", None), "admission", None)
        if admission is not None:
            admission.draining = True
        super().handle_exit(sig, frame)  # type: ignore[arg-type]


def run_gateway(app: object, settings: Settings, log_level: str) -> None:
    """Serve until SIGINT or SIGTERM. uvicorn drains in-flight requests (10 s at most), runs the lifespan
    shutdown (jobs handed back, decoders stopped), then re-raises the signal it caught: SIGINT becomes
    KeyboardInterrupt and SIGTERM :class:`Terminated`, so the caller's context managers run either way
    (without main's handler for it, the re-raised SIGTERM would kill the process on the spot, Triton orphaned)."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        log_config=None,  # configure_logging's handlers: one format, with request ids
        timeout_graceful_shutdown=10,
        limit_concurrency=settings.limit_concurrency,  # beyond it uvicorn answers 503 without calling the app
    )
    _Gateway(config).run()


def serve(settings: Settings, *, triton_log: str | None = None, log_level: str = "info") -> None:
    models = [settings.ensemble_model, settings.recognizer_model, settings.enhancer_model]
    if settings.triton_url:
        from serve.triton import split_urls

        urls_given = split_urls(settings.triton_url)
        wait_for_external(urls_given, 30.0, models)
        run_gateway(create_app(settings, urls_given), settings, log_level)
        return
    from serve.triton import TritonServer, TritonSupervisor

    log.info("starting the bundled Triton on %s", settings.model_repository)
    # uvicorn handles SIGINT/SIGTERM (graceful shutdown); the context manager then stops Triton's
    # process group, also on errors, so Ctrl-C leaves no tritonserver or python-backend stub behind.
    # The supervisor restarts a Triton that dies (same ports, bounded back-off); /readyz is 503 meanwhile.
    with TritonSupervisor(TritonServer(settings.model_repository, log_file=triton_log)) as urls:
        log.info("Triton ready: HTTP %s, gRPC %s, metrics %s", urls.http_url, urls.grpc_url, urls.metrics_url)
        run_gateway(create_app(settings, urls.grpc_address), settings, log_level)
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except UsageError as exc:  # a bad flag or DYNTTA_* value: exit 2 with the usage line, no traceback
        parser.error(str(exc))
    configure_logging(args.log_level, json_logs=settings.json_logs)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("binding %s without an API key: every endpoint is open to the network", settings.host)
    from serve.store.lock import StateDirBusy, check_state_dir_free
    from serve.triton import TritonError

    signal.signal(signal.SIGTERM, _terminate)  # also while Triton starts: every ``with`` unwinds
    try:
        check_state_dir_free(settings.state_dir)  # before Triton starts: a second gateway on a dir refuses now
        serve(settings, triton_log=args.triton_log, log_level=args.log_level)
    except StateDirBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated):
        pass  # graceful: uvicorn drained, the lifespan and Triton were stopped on the way out
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
