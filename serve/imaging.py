"""Decoding uploads into model input, and encoding results, with the safety checks a public endpoint needs.

Every image goes through :func:`dyntta.data.to_model_input` under the served recognizer's
:class:`~dyntta.data.Preprocess` policy (the ``preprocess`` parameter of its Triton config), the same
conversion the training data went through; the module imports no torch. Failure modes map onto distinct
errors:

- the declared content type is not an image, or the bytes are no allowed format -> 415;
- the bytes start like an allowed format but do not decode -> 400;
- the header declares more than ``max_pixels`` pixels (decompression bomb), or the images of one request
  (or archive) together more than their :class:`PixelBudget` -> 413, checked from the headers before any
  pixel is decoded;
- the encoding would be decoded by one of Pillow's pure-Python decoders (BMP RLE4/RLE8: seconds of CPU for a
  1 KB file that declares 36 M pixels) -> 415, refused from the header.

The CPU a hostile file can still cost (Pillow parses JPEG markers and PNG chunks in Python, byte by byte)
is bounded by :mod:`serve.decode_pool`, which runs the decoding of anything but tiny uploads in worker
processes under a CPU-time limit.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dyntta.data.preprocess import RESIZE, Preprocess, to_model_input
from serve.errors import BadImage, PayloadTooLarge, UnsupportedMediaType

# Register Pillow's format plugins now, not on the first open (~0.1 s of CPU): the decoding processes are
# forked from a server that imported this module, so none of them pays it on its first upload.
Image.init()

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
#: content types a browser or client may declare for an image upload; the bytes are sniffed anyway
_GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream"}


def sniff_format(data: bytes) -> str | None:
    """The allowed format these bytes start with, or None. Cheap and independent of Pillow's plugins."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    return None


class PixelBudget:
    """Pixels a request (or an archive) may decode in total, charged image by image from the headers.

    ``PixelBudget(max_image, max_total)``; :meth:`charge` raises 413 naming the image that breaks either
    limit. Used by :func:`decode_batch` per request and by the zip reader per archive.
    """

    def __init__(self, max_image_pixels: int, max_total_pixels: int | None = None) -> None:
        self.max_image_pixels = max_image_pixels
        self.max_total_pixels = max_image_pixels if max_total_pixels is None else max_total_pixels
        self.used = 0

    def charge(self, name: str, width: int, height: int) -> None:
        pixels = width * height
        if pixels > self.max_image_pixels:
            raise PayloadTooLarge(
                f"{name}: {width}x{height} pixels exceeds the limit of {self.max_image_pixels} pixels per image"
            )
        if self.used + pixels > self.max_total_pixels:
            raise PayloadTooLarge(
                f"{name}: the images together exceed the decode budget of {self.max_total_pixels} pixels "
                f"({self.used + pixels} declared); send fewer or smaller images"
            )
        self.used += pixels


def python_decoded(image: Image.Image) -> str | None:
    """The name of the pure-Python Pillow decoder ``image`` would be decoded with, or None.

    Pillow registers its Python decoders (``ImageFile.PyDecoder`` subclasses) in ``Image.DECODERS``; the C
    ones live in ``Image.core``. Checking the registry, not a list of names, also catches decoders a future
    Pillow adds.
    """
    for tile in getattr(image, "tile", ()):  # an ImageFile's undecoded tiles (a plain Image has none)
        codec: str = tile.codec_name
        if codec in Image.DECODERS:
            return codec
    return None


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


def check_content_type(content_type: str | None, filename: str = "") -> None:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind not in _GENERIC_TYPES and not kind.startswith("image/"):
        raise UnsupportedMediaType(
            f"{filename or 'upload'}: content type {kind!r} is not an image; send {', '.join(ALLOWED_FORMATS)} files"
        )


def open_header(data: bytes, *, budget: PixelBudget, name: str = "upload") -> Image.Image:
    """Open ``data`` without decoding pixels: format, declared size (charged to ``budget``) and encoding
    checks. The returned image is decoded by :func:`load`."""
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType(f"{name}: not a supported image; allowed formats: {', '.join(ALLOWED_FORMATS)}")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse on our own limit below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{name}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise BadImage(f"{name}: looks like {fmt} but cannot be decoded") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as exc:
        raise BadImage(f"{name}: broken {fmt} image ({exc.__class__.__name__}: {exc})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise BadImage(f"{name}: empty image")
    decoder = python_decoded(image)
    if decoder is not None:
        compression = {1: "RLE8", 2: "RLE4"}.get(image.info.get("compression", -1), decoder)
        image.close()
        raise UnsupportedMediaType(
            f"{name}: {fmt} with {compression} compression is not accepted (Pillow decodes it in pure Python, "
            "seconds of CPU per megapixel); send PNG or an uncompressed BMP"
        )
    try:
        budget.charge(name, width, height)
    except PayloadTooLarge:
        image.close()
        raise
    return image


def load(image: Image.Image, *, name: str = "upload") -> Image.Image:
    """Decode the pixels of an image from :func:`open_header`, mapping decoder failures onto 400/413."""
    fmt = image.format or "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{name}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise BadImage(f"{name}: looks like {fmt} but cannot be decoded") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as exc:
        # truncated or corrupt data surfaces as any of these depending on the plugin
        image.close()
        raise BadImage(f"{name}: broken {fmt} image ({exc.__class__.__name__}: {exc})") from None
    return image


def open_image(data: bytes, *, max_pixels: int, name: str = "upload", budget: PixelBudget | None = None) -> Image.Image:
    """Open and fully decode ``data`` after the format, size and encoding checks (``budget``: shared by
    the images of one request or archive; by default this image alone, up to ``max_pixels``)."""
    image = open_header(data, budget=budget or PixelBudget(max_pixels), name=name)
    return load(image, name=name)


def _model_input(image: Image.Image, size: int, name: str, policy: Preprocess) -> np.ndarray[Any, Any]:
    try:
        pixels: np.ndarray[Any, Any] = to_model_input(image, size, policy)
        return pixels
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise BadImage(f"{name}: cannot convert to RGB ({exc.__class__.__name__}: {exc})") from None
    finally:
        image.close()


def decode_to_model_input(
    upload: Upload, size: int, max_pixels: int, policy: Preprocess = RESIZE
) -> np.ndarray[Any, Any]:
    """One upload -> uint8 (size, size, 3), exactly as the training data was prepared."""
    pixels: np.ndarray[Any, Any] = decode_batch([upload], size, max_pixels, policy=policy)[0]
    return pixels


def decode_batch(
    uploads: Sequence[Upload],
    size: int,
    max_pixels: int,
    max_total_pixels: int | None = None,
    policy: Preprocess = RESIZE,
) -> np.ndarray[Any, Any]:
    """Uploads -> uint8 (N, size, size, 3) under ``policy`` (the model's, :attr:`serve.inference.ModelInfo.
    preprocess`). Every header is checked (type, format, encoding, the pixel budget of the whole request)
    before the first pixel is decoded."""
    budget = PixelBudget(max_pixels, max_total_pixels)
    images: list[Image.Image] = []
    try:
        for i, upload in enumerate(uploads):
            name = upload.filename or f"image{i}"
            check_content_type(upload.content_type, name)
            if not upload.data:
                raise BadImage(f"{name}: empty file")
            images.append(open_header(upload.data, budget=budget, name=name))
        out = np.empty((len(uploads), size, size, 3), dtype=np.uint8)
        for i, (upload, image) in enumerate(zip(uploads, images, strict=True)):
            name = upload.filename or f"image{i}"
            out[i] = _model_input(load(image, name=name), size, name, policy)
        return out
    finally:
        for image in images:
            image.close()


#: uploads this small decode faster than a hop to the thread pool takes (measured: ~0.25 ms decode of a
#: 28x28 PNG vs ~1 ms for the hop on a loaded 2-core machine), so they are decoded on the event loop
INLINE_MAX_BYTES = 32 * 1024
INLINE_MAX_PIXELS = 256 * 256


def cheap_to_decode(uploads: Sequence[Upload], max_pixels: int, max_total_pixels: int | None = None) -> bool:
    """True when the uploads may be decoded on the event loop. Small uploads (a few KB together, so even
    Pillow's Python header parsing is bounded) have their headers checked here, so that a refusal (413,
    415, 400) needs no decoding process; they are cheap when they also declare few pixels."""
    if sum(len(u.data) for u in uploads) > INLINE_MAX_BYTES:
        return False
    budget = PixelBudget(max_pixels, max_total_pixels)
    for i, upload in enumerate(uploads):
        name = upload.filename or f"image{i}"
        check_content_type(upload.content_type, name)
        if not upload.data:
            raise BadImage(f"{name}: empty file")
        open_header(upload.data, budget=budget, name=name).close()
    return budget.used <= INLINE_MAX_PIXELS


def encode_png(pixels: np.ndarray[Any, Any]) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()
