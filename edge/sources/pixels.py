"""GenICam pixel formats (PFNC names and codes) -> the BGR uint8 image the model takes.

Only 8-bit formats are converted: a 10/12/16-bit camera must be set to an 8-bit format (`source.pixel_format`),
never silently scaled. Bayer mosaics are named by their top-left 2x2 block as GenICam does (BayerRG8 = R G / G B);
OpenCV's short names (COLOR_BayerRG2BGR) count from the second row and column and would swap red and blue, so the
explicit four-letter codes are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PixelFormat:
    """One supported format: its PFNC code, bytes per pixel and the OpenCV conversion to BGR (None = already BGR)."""

    name: str
    code: int
    channels: int
    to_bgr: int | None


FORMATS: dict[str, PixelFormat] = {
    f.name: f
    for f in (
        PixelFormat("Mono8", 0x01080001, 1, cv2.COLOR_GRAY2BGR),
        PixelFormat("BayerGR8", 0x01080008, 1, cv2.COLOR_BayerGRBG2BGR),
        PixelFormat("BayerRG8", 0x01080009, 1, cv2.COLOR_BayerRGGB2BGR),
        PixelFormat("BayerGB8", 0x0108000A, 1, cv2.COLOR_BayerGBRG2BGR),
        PixelFormat("BayerBG8", 0x0108000B, 1, cv2.COLOR_BayerBGGR2BGR),
        PixelFormat("RGB8", 0x02180014, 3, cv2.COLOR_RGB2BGR),
        PixelFormat("BGR8", 0x02180015, 3, None),
        PixelFormat("RGBa8", 0x02200016, 4, cv2.COLOR_RGBA2BGR),
        PixelFormat("BGRa8", 0x02200017, 4, cv2.COLOR_BGRA2BGR),
    )
}
_BY_CODE = {f.code: f.name for f in FORMATS.values()}
SUPPORTED: tuple[str, ...] = tuple(FORMATS)


def name_of(code: int) -> str:
    """The PFNC name of a pixel format code (as Aravis reports it), or `0x...` when it is not one we convert."""
    return _BY_CODE.get(code, f"0x{code:08x}")


def to_bgr(data: np.ndarray, width: int, height: int, pixel_format: str, stride: int | None = None) -> np.ndarray:
    """Convert one raw buffer (1-D uint8; rows `stride` bytes apart when padded) to a (height, width, 3) BGR image.

    Bytes after the image (chunk data) are ignored.

    Raises:
        ValueError: the format is not an 8-bit one we convert, or the buffer is smaller than the image it claims.
    """
    fmt = FORMATS.get(pixel_format)
    if fmt is None:
        msg = (
            f"pixel format {pixel_format} cannot be converted (inspectd takes 8-bit formats: {', '.join(SUPPORTED)}); "
            "set source.pixel_format"
        )
        raise ValueError(msg)
    row = width * fmt.channels
    stride = stride or row
    if width <= 0 or height <= 0 or stride < row or data.size < stride * (height - 1) + row:
        msg = f"{pixel_format} buffer of {data.size} bytes is too small for {width}x{height} (row stride {stride})"
        raise ValueError(msg)
    if data.size < stride * height:  # the last row's padding may be cut off
        data = np.concatenate([data, np.zeros(stride * height - data.size, np.uint8)])
    rows = data[: stride * height].reshape(height, stride)[:, :row]
    image = rows.reshape(height, width, fmt.channels) if fmt.channels > 1 else rows
    if fmt.to_bgr is None:
        return image.copy()  # a writable array of its own (driver buffers may be read-only views)
    return cv2.cvtColor(np.ascontiguousarray(image), fmt.to_bgr)
