"""HTTP routers, one module per resource."""

from typing import Any

from serve.schemas import ErrorResponse

#: error responses shared by the endpoints that take uploads (documented in the OpenAPI schema)
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "broken image or bad parameters"},
    401: {"model": ErrorResponse, "description": "missing or wrong X-API-Key (when one is configured)"},
    413: {"model": ErrorResponse, "description": "body, image or archive over the limits"},
    415: {"model": ErrorResponse, "description": "not an image (allowed: JPEG, PNG, WebP, BMP)"},
    422: {"model": ErrorResponse, "description": "request validation failed"},
    502: {"model": ErrorResponse, "description": "the inference server returned an error"},
    503: {"model": ErrorResponse, "description": "the inference server or a model is unavailable"},
    504: {"model": ErrorResponse, "description": "the inference server did not answer in time"},
}
