"""``python -m serve.triton``: run the bundled Triton in the foreground, supervised, until Ctrl-C or SIGTERM.

Prints one JSON line with its URLs once every model is ready, e.g. for scripts::

    {"http_url": "http://127.0.0.1:8000", "grpc_url": "grpc://127.0.0.1:8001", "metrics_url": ...}

The admin APIs (model repository, shared memory, trace, logging) are restricted to a secret header drawn at
start; ``--print-admin-header`` adds it to that line (for your own tooling; anyone who can read the
output can then use them).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from collections.abc import Sequence

from dyntta.cli import ArgumentParser
from serve.triton.server import DEFAULT_STARTUP_TIMEOUT, TritonServer
from serve.triton.supervisor import TritonSupervisor


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m serve.triton", description=__doc__)
    add = parser.add_argument
    add("--model-repository", default="model_repository", help="the repository to serve (default: %(default)s)")
    add("--host", default="127.0.0.1", help="address every endpoint binds (default: %(default)s)")
    add("--http-port", type=int, default=None, help="HTTP port (default: a free one)")
    add("--grpc-port", type=int, default=None, help="gRPC port (default: a free one)")
    add("--metrics-port", type=int, default=None, help="Prometheus metrics port (default: a free one)")
    add("--log-file", default=None, help="also append Triton's log to this file (default: none)")
    add("--log-verbose", type=int, default=0, help="Triton's --log-verbose level (default: %(default)s)")
    add(
        "--startup-timeout",
        type=float,
        default=DEFAULT_STARTUP_TIMEOUT,
        help="seconds to wait for every model to be ready (default: %(default)s)",
    )
    add(
        "--restart",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart the server with back-off when it dies (default: %(default)s)",
    )
    add(
        "--print-admin-header",
        action="store_true",
        help="include the admin header (name and secret) in the JSON line (default: off)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = TritonServer(
        args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_file=args.log_file,
        log_verbose=args.log_verbose,
        startup_timeout=args.startup_timeout,
    )
    runner: TritonServer | TritonSupervisor = TritonSupervisor(server) if args.restart else server
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with runner as urls:
        line = {"http_url": urls.http_url, "grpc_url": urls.grpc_url, "metrics_url": urls.metrics_url}
        if args.print_admin_header:
            line["admin_headers"] = server.admin_headers  # type: ignore[assignment]
        print(json.dumps(line), flush=True)
        try:
            while not stop.is_set() and (args.restart or server.is_alive()):
                stop.wait(1.0)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
