"""Weather corruptions and the OpenCV operations re-implemented for spatter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dyntta.corruptions import corrupt, frost_texture_source, set_frost_textures, weather
from dyntta.corruptions._random import ImageRandom


def test_brightness_matches_skimage_hsv(small: torch.Tensor) -> None:
    color = pytest.importorskip("skimage.color")
    x = small[:3].double()
    x[0, :, :4, :4] = 0.0  # black pixels become grey
    ours = corrupt(x, "brightness", 4, table="imagenet").permute(0, 2, 3, 1).numpy()
    for i, image in enumerate(x.permute(0, 2, 3, 1).numpy()):
        hsv = color.rgb2hsv(image)
        hsv[..., 2] = np.clip(hsv[..., 2] + 0.4, 0, 1)
        assert np.abs(ours[i] - np.clip(color.hsv2rgb(hsv), 0, 1)).max() < 1e-6  # float32 inside


def test_fog_plasma_is_normalised_and_keyed() -> None:
    keys = torch.tensor([3, 5, 7])
    maps = weather.plasma_fractal(ImageRandom(keys), 32, 2.0, stream=1, dtype=torch.float64)
    assert maps.shape == (3, 32, 32)
    assert torch.equal(maps.amin(dim=(1, 2)), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(maps.amax(dim=(1, 2)), torch.ones(3, dtype=torch.float64))
    alone = weather.plasma_fractal(ImageRandom(keys[1:2]), 32, 2.0, stream=1, dtype=torch.float64)
    torch.testing.assert_close(alone[0], maps[1])


def test_procedural_frost_textures_match_reference_moments() -> None:
    assert frost_texture_source() == "procedural"
    for i, (mean, std) in enumerate(weather.FROST_TEXTURE_STATS):
        texture = weather._procedural_frost(i)
        assert torch.allclose(texture.mean(dim=(1, 2)), torch.tensor(mean), atol=0.01)
        assert torch.allclose(texture.std(dim=(1, 2)), torch.tensor(std), atol=0.015)


def test_frost_texture_sources(small: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="unknown frost texture source"):
        set_frost_textures("pictures")
    with pytest.raises(ValueError, match="missing"):
        set_frost_textures(["/nonexistent/frost.png"])
    pytest.importorskip("imagecorruptions")
    try:
        set_frost_textures("imagecorruptions")
        assert frost_texture_source().startswith("imagecorruptions:frost1.png")
        out = corrupt(small[:2], "frost", 3)
        assert out.shape == small[:2].shape and float(out.min()) >= 0 and float(out.max()) <= 1
    finally:
        set_frost_textures(None)
    assert frost_texture_source() == "procedural"


def test_snow_brightens() -> None:
    x = torch.full((2, 3, 32, 32), 0.3)
    assert float(corrupt(x, "snow", 5).mean()) > 0.35


def _liquid_layer(size: int, seed: int) -> np.ndarray:
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(seed)
    layer = ndimage.gaussian_filter(rng.normal(0.65, 0.3, (size, size)), 2.0, mode="nearest")
    layer[layer < 0.68] = 0
    return (np.clip(layer, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1])
def test_spatter_opencv_steps_match_opencv(seed: int) -> None:
    cv2 = pytest.importorskip("cv2")
    level = _liquid_layer(64, seed)
    t = torch.from_numpy(level).float()[None, None]
    edges = weather.canny(t)
    ref_edges = cv2.Canny(level, 50, 150) > 0
    assert ref_edges.any() and np.array_equal(edges[0, 0].numpy(), ref_edges)
    ref_dist = cv2.distanceTransform(255 - cv2.Canny(level, 50, 150), cv2.DIST_L2, 5)
    dist = weather.chamfer_distance(edges, 20.0)[0, 0].numpy()
    assert np.abs(dist - np.minimum(ref_dist, 20)).max() < 1e-3
    u8 = np.minimum(ref_dist, 20).astype(np.uint8) * 12
    ours = weather.equalize_hist(torch.from_numpy(u8).float()[None, None])[0, 0].numpy()
    assert np.array_equal(ours, cv2.equalizeHist(u8).astype(np.float32))
