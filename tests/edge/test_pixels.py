"""GenICam pixel formats to BGR: every Bayer order lands red on red, packed RGB(a) orders, padded rows, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from edge.sources import pixels

# BGR colour of each quadrant of the test scene: red, green, blue, yellow
COLOURS = [(0, 0, 220), (0, 200, 0), (210, 0, 0), (0, 190, 200)]
# GenICam Bayer name -> colour index (0 = R, 1 = G, 2 = B in RGB) at (row % 2, col % 2)
PATTERNS = {
    "BayerRG8": [[0, 1], [1, 2]],
    "BayerGR8": [[1, 0], [2, 1]],
    "BayerGB8": [[1, 2], [0, 1]],
    "BayerBG8": [[2, 1], [1, 0]],
}


def scene(h: int = 32, w: int = 32) -> np.ndarray:
    """Four flat colour quadrants, BGR."""
    img = np.zeros((h, w, 3), np.uint8)
    for i, colour in enumerate(COLOURS):
        y, x = (i // 2) * h // 2, (i % 2) * w // 2
        img[y : y + h // 2, x : x + w // 2] = colour
    return img


def mosaic(bgr: np.ndarray, pattern: list[list[int]]) -> np.ndarray:
    """What a colour sensor with this filter pattern reads out of `bgr` (one channel per pixel)."""
    rgb = bgr[:, :, ::-1]
    out = np.zeros(bgr.shape[:2], np.uint8)
    for dy in range(2):
        for dx in range(2):
            out[dy::2, dx::2] = rgb[dy::2, dx::2, pattern[dy][dx]]
    return out


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_bayer_orders(name: str) -> None:
    """Each Bayer format demosaics to the scene's colours (a swapped order would turn red into blue)."""
    truth = scene()
    raw = mosaic(truth, PATTERNS[name]).reshape(-1)
    out = pixels.to_bgr(raw, 32, 32, name)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    for i, colour in enumerate(COLOURS):
        cy, cx = (i // 2) * 16 + 8, (i % 2) * 16 + 8  # quadrant centres, away from the demosaicing seams
        assert np.abs(out[cy, cx].astype(int) - colour).max() <= 2, (name, i, out[cy, cx], colour)


@pytest.mark.parametrize(
    ("name", "channels", "order"),
    [("RGB8", 3, [2, 1, 0]), ("BGR8", 3, [0, 1, 2]), ("RGBa8", 4, [2, 1, 0]), ("BGRa8", 4, [0, 1, 2])],
)
def test_packed_colour(name: str, channels: int, order: list[int]) -> None:
    """Packed RGB/BGR (with or without alpha) come out BGR; the alpha byte is dropped."""
    px = np.array([10, 20, 30, 255][:channels], np.uint8)
    raw = np.tile(px, 6)  # 3x2 image
    out = pixels.to_bgr(raw, 3, 2, name)
    assert out.shape == (2, 3, 3)
    assert out[1, 2].tolist() == [int(px[i]) for i in order]
    assert out.flags.writeable and out.flags.c_contiguous


def test_mono_and_padded_rows() -> None:
    """Mono8 becomes grey BGR; rows padded to a stride are cut to the image width."""
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    padded = np.zeros((3, 8), np.uint8)
    padded[:, :4] = img
    out = pixels.to_bgr(padded.reshape(-1), 4, 3, "Mono8", stride=8)
    assert out.shape == (3, 4, 3) and (out[:, :, 1] == img).all()


def test_refusals() -> None:
    """Formats inspectd does not convert and short buffers are errors that name the fix."""
    with pytest.raises(ValueError, match="Mono16 cannot be converted.*set source.pixel_format"):
        pixels.to_bgr(np.zeros(32, np.uint8), 4, 4, "Mono16")
    with pytest.raises(ValueError, match="too small"):
        pixels.to_bgr(np.zeros(10, np.uint8), 4, 4, "Mono8")
    assert pixels.name_of(0x01080009) == "BayerRG8" and pixels.name_of(0x01100007) == "0x01100007"
