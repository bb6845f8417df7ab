"""The preprocessing contract, mode by mode, against expected arrays computed here with plain numpy.

Each test builds an image whose pixels are known, encodes it where the mode comes from a file (16-bit PNG,
CMYK JPEG, APNG, EXIF-rotated PNG), and compares ``to_model_input`` at the image's own size (no resize) with
the arithmetic the docstring promises.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dyntta.data import arrays_to_model_input, to_model_input
from dyntta.data.transforms import RESAMPLE

RNG = np.random.default_rng(7)
#: square test images, so that to_model_input(image, H) does not resize
H = W = 11


def _roundtrip(image: Image.Image, fmt: str, **kwargs) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    buffer.seek(0)
    return Image.open(buffer)


def _grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


def test_uint8_grey_and_rgb_are_the_unchanged_path():
    """Training data (L and RGB arrays) goes through convert("RGB") + bilinear resize, as it always did."""
    grey = RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    rgb = RNG.integers(0, 256, (5, 20, 24, 3), dtype=np.uint8)
    for arrays in (grey, rgb):
        out = arrays_to_model_input(arrays, 32).permute(0, 2, 3, 1).numpy()
        for i, array in enumerate(arrays):
            reference = Image.fromarray(array).convert("RGB").resize((32, 32), RESAMPLE)
            np.testing.assert_array_equal(out[i], np.asarray(reference))
    np.testing.assert_array_equal(to_model_input(Image.fromarray(grey[0]), 28), _grey3(grey[0]))


def _native(image: Image.Image) -> np.ndarray:
    """to_model_input at the image's own (square) size: the conversion alone, no resize."""
    width, height = image.size
    assert width == height
    return to_model_input(image, width)


def test_16_bit_grey_png_is_scaled_not_clipped():
    samples = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
    samples[0, :3] = (0, 65535, 32768)
    image = _roundtrip(Image.fromarray(samples), "PNG")
    assert image.mode.startswith("I")
    expected = np.floor(samples.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    pixels = _native(image)
    np.testing.assert_array_equal(pixels, _grey3(expected))
    # the bug this replaces: convert("RGB") clipped 16-bit values, so almost every pixel came out white
    assert (pixels == 255).mean() < 0.05


def test_32_bit_integer_grey_is_read_as_16_bit_and_clipped():
    samples = RNG.integers(-1000, 70000, (H, W)).astype(np.int32)
    image = Image.fromarray(samples)
    assert image.mode == "I"
    clipped = np.clip(samples, 0, 65535).astype(np.float64)
    np.testing.assert_array_equal(_native(image), _grey3(np.floor(clipped * 255 / 65535 + 0.5)))


def test_float_grey_is_unit_range():
    values = RNG.uniform(-0.2, 1.2, (H, W)).astype(np.float32)
    values[0, :3] = (np.nan, np.inf, -np.inf)
    image = Image.fromarray(values)
    assert image.mode == "F"
    clean = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    np.testing.assert_array_equal(_native(image), _grey3(np.rint(np.clip(clean, 0, 1) * 255)))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_black(mode: str):
    rgba = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    image = _roundtrip(Image.fromarray(rgba).convert(mode), "PNG")
    assert image.mode == mode
    colour = np.asarray(image.convert("RGBA"), dtype=np.float64)
    expected = np.floor(colour[..., :3] * colour[..., 3:] / 255 + 0.5).astype(np.uint8)
    pixels = _native(image)
    np.testing.assert_array_equal(pixels, expected)
    assert (pixels[0, 0] == 0).all(), "a fully transparent pixel is black"


def test_palette_with_transparency_is_composited_on_black():
    indices = RNG.integers(0, 4, (H, W), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 200, 200, 200]
    image.putpalette(palette)
    image = _roundtrip(image, "PNG", transparency=2)  # index 2 (blue) is transparent
    lut = np.array(palette, dtype=np.uint8).reshape(-1, 3)
    expected = lut[indices]
    expected[indices == 2] = 0
    np.testing.assert_array_equal(_native(image), expected)


def test_cmyk_jpeg_uses_the_documented_formula():
    cmyk = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
    image = _roundtrip(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100)
    assert image.mode == "CMYK"
    decoded = np.asarray(image, dtype=np.float64)  # lossy: compare with the decoded CMYK samples
    expected = np.floor((255 - decoded[..., :3]) * (255 - decoded[..., 3:]) / 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(_native(image), expected)


@pytest.mark.parametrize(("orientation", "turn"), [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(orientation: int, turn: int):
    rgb = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)  # a marked corner, so a wrong rotation cannot pass by symmetry
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = _roundtrip(Image.fromarray(rgb), "PNG", exif=exif)
    # orientation 6 = "rotate 90 degrees clockwise to display", 8 = counter-clockwise, 3 = 180
    np.testing.assert_array_equal(_native(image), np.rot90(rgb, k=turn))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animation_gives_its_first_frame(fmt: str):
    frames = [Image.fromarray(RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)) for _ in range(3)]
    image = _roundtrip(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True, duration=100)
    assert getattr(image, "n_frames", 1) == 3
    image.seek(2)  # wherever the caller left it
    np.testing.assert_array_equal(_native(image), np.asarray(frames[0]))


def test_one_bit_and_plain_palette():
    bits = RNG.integers(0, 2, (H, W), dtype=np.uint8).astype(bool)
    np.testing.assert_array_equal(_native(Image.fromarray(bits)), _grey3(bits * 255))
    indices = RNG.integers(0, 3, (H, W), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    lut = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], dtype=np.uint8)
    np.testing.assert_array_equal(_native(image), lut[indices])
