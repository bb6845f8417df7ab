"""Triton for the gateway: the bundled server (start, supervise), external servers, and URLs.

The bundled ``tritonserver`` (2.51, in the ``nvidia-pytriton`` wheel) only has the python backend, which is
what the CPU flavour of ``model_repository/`` is written for (see ``export/``). Usage::

    from serve.triton import TritonServer, TritonSupervisor, connect, parse_triton_url

    with TritonServer("model_repository") as urls:      # starts, waits until every model is ready
        client = tritonclient.grpc.InferenceServerClient(urls.grpc_address)
        ...                                              # stopped (process group, no orphan) on exit

    with TritonSupervisor(TritonServer("model_repository")) as urls:
        ...                                              # restarted on the same ports if it dies

    urls = connect("http://triton:8000")                 # an external server (e.g. the NGC container)

Modules: :mod:`~serve.triton.urls` (the one URL rule), :mod:`~serve.triton.bundled` (finding the binary),
:mod:`~serve.triton.server` (the child process), :mod:`~serve.triton.supervisor` (restarts),
:mod:`~serve.triton.probes` and :mod:`~serve.triton.external` (readiness), :mod:`~serve.triton.pool` (the
gateway's N replicas). ``python -m serve.triton --help`` runs one in the foreground.
"""

from serve.triton.bundled import BundledTriton, find_bundled_triton
from serve.triton.errors import ModelLoadError, PortInUseError, RepositoryNotFoundError, ServerStartError, TritonError
from serve.triton.external import connect
from serve.triton.ports import check_port_free, free_port
from serve.triton.probes import repository_index
from serve.triton.server import ADMIN_HEADER, TritonServer
from serve.triton.supervisor import TritonSupervisor
from serve.triton.urls import TritonURLs, grpc_addresses, parse_triton_url, split_urls

__all__ = [
    "ADMIN_HEADER",
    "BundledTriton",
    "ModelLoadError",
    "PortInUseError",
    "RepositoryNotFoundError",
    "ServerStartError",
    "TritonError",
    "TritonServer",
    "TritonSupervisor",
    "TritonURLs",
    "check_port_free",
    "connect",
    "find_bundled_triton",
    "free_port",
    "grpc_addresses",
    "parse_triton_url",
    "repository_index",
    "split_urls",
]
