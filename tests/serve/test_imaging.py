"""Upload decoding: allowed formats, the preprocessing contract, and each failure's status code."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dyntta.data import Preprocess, to_model_input
from serve.errors import BadImage, PayloadTooLarge, UnsupportedMediaType
from serve.imaging import Upload, decode_batch, decode_to_model_input, encode_png, sniff_format
from tests.serve.helpers import encode, header_bomb_png

RNG = np.random.default_rng(0)
PHOTO = Image.fromarray(RNG.integers(0, 256, (45, 61, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_allowed_formats_decode_exactly_like_the_contract(fmt: str):
    data = encode(PHOTO, fmt)
    assert sniff_format(data) == fmt
    pixels = decode_to_model_input(Upload("x", f"image/{fmt.lower()}", data), 32, 10**7)
    with Image.open(io.BytesIO(data)) as reference:
        expected = to_model_input(reference, 32)
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
    np.testing.assert_array_equal(pixels, expected)


@pytest.mark.parametrize("policy", [Preprocess("center_crop"), Preprocess("letterbox", fill=(9, 9, 9))])
def test_uploads_follow_the_served_policy(policy: Preprocess):
    """A 3:1 upload is decoded under the model's policy (ModelInfo.preprocess), not squashed."""
    wide = Image.fromarray(RNG.integers(0, 256, (20, 60, 3), dtype=np.uint8))
    pixels = decode_batch([Upload("wide.png", "image/png", encode(wide, "PNG"))], 20, 10**7, policy=policy)[0]
    np.testing.assert_array_equal(pixels, to_model_input(wide, 20, policy))
    if policy.mode == "center_crop":  # the shorter side is the model's: the middle third, untouched
        np.testing.assert_array_equal(pixels, np.asarray(wide)[:, 20:40])
    else:
        assert (pixels[:6] == 9).all() and (pixels[14:] == 9).all()  # rows of padding above and below
    assert not np.array_equal(pixels, to_model_input(wide, 20))  # the legacy resize squashes it


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16"])
def test_any_mode_becomes_rgb(mode: str):
    image = PHOTO.convert(mode) if mode != "I;16" else PHOTO.convert("L").convert("I;16")
    pixels = decode_to_model_input(Upload("x", "image/png", encode(image, "PNG")), 32, 10**7)
    assert pixels.shape == (32, 32, 3)


def test_grayscale_png_matches_training_conversion():
    """A 28x28 grayscale image uploaded as PNG gives the very bytes the training data was built from."""
    from dyntta.data import arrays_to_model_input

    gray = RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    uploads = [Upload(f"{i}.png", "image/png", encode(Image.fromarray(g), "PNG")) for i, g in enumerate(gray)]
    decoded = decode_batch(uploads, 32, 10**7)
    np.testing.assert_array_equal(decoded, arrays_to_model_input(gray, 32).permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "video/mp4"])
def test_declared_non_image_is_415(content_type: str):
    with pytest.raises(UnsupportedMediaType):
        decode_to_model_input(Upload("x", content_type, encode(PHOTO, "PNG")), 32, 10**7)


@pytest.mark.parametrize("data", [b"hello, world", b"%PDF-1.7 ...", b"GIF89a\x01\x00\x01\x00"])
def test_bytes_of_no_allowed_format_are_415(data: bytes):
    with pytest.raises(UnsupportedMediaType):
        decode_to_model_input(Upload("x", "application/octet-stream", data), 32, 10**7)


def test_gif_and_tiff_are_not_allowed_even_as_images():
    for fmt in ("GIF", "TIFF"):
        with pytest.raises(UnsupportedMediaType):
            decode_to_model_input(Upload("x", "image/" + fmt.lower(), encode(PHOTO, fmt)), 32, 10**7)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_truncated_or_corrupt_images_are_400(fmt: str):
    data = encode(PHOTO, fmt)
    for broken in (data[: len(data) // 2], data[:16], data[:12] + b"\x00" * 40):
        with pytest.raises(BadImage):
            decode_to_model_input(Upload("x", "image/png", broken), 32, 10**7)


def test_empty_upload_is_400():
    with pytest.raises(BadImage):
        decode_to_model_input(Upload("x", "image/png", b""), 32, 10**7)


def test_decompression_bomb_is_413_before_decoding():
    # 8000 x 8000 zeros compress to ~60 KB of PNG but decode to 64 MB; a lying header is refused alike
    bomb = encode(Image.new("L", (8000, 8000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(PayloadTooLarge):
        decode_to_model_input(Upload("liar.png", "image/png", header_bomb_png(10**5, 10**5)), 32, 40_000_000)
    with pytest.raises(PayloadTooLarge):
        decode_to_model_input(Upload("bomb.png", "image/png", bomb), 32, 40_000_000)
    with pytest.raises(PayloadTooLarge):
        decode_to_model_input(Upload("x", "image/png", encode(PHOTO, "PNG")), 32, 100)


def test_encode_png_roundtrip():
    pixels = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(pixels))) as image:
        np.testing.assert_array_equal(np.asarray(image), pixels)
