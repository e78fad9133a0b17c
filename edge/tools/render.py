"""Pure drawing helpers shared by `inspectd view` and the demo report: no I/O, no state, numpy/OpenCV drawing.

Everything takes and returns BGR uint8 images and never modifies its inputs. Verdict fields come as the plain dict
of `Verdict.to_dict()` (which is also the debug-stream header), so the viewer and the demo draw from one format.
The anomaly map is on the normalised scale (1.0 = calibrated threshold) at model size; it is resized to the frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from edge.contract import THRESHOLD
from edge.sinks.zmq_debug import HEATMAP_MAX  # the debug stream's scale: the threshold sits mid-way up the colour map

BANNER_H = 34
FONT = cv2.FONT_HERSHEY_SIMPLEX

COLOURS: dict[str, tuple[int, int, int]] = {  # BGR
    "pass": (60, 160, 40),
    "fail": (40, 40, 210),
    "error": (0, 140, 255),
    "waiting": (90, 90, 90),
}
REGION_COLOUR = (0, 255, 255)  # yellow boxes read on both the frame and the red end of the colour map


def colorize(anomaly_map: np.ndarray, *, vmax: float = HEATMAP_MAX) -> np.ndarray:
    """Anomaly map (h, w) -> BGR image with OpenCV's JET colour map (blue = normal, red = far above threshold)."""
    level = np.clip(np.nan_to_num(np.asarray(anomaly_map, np.float32), nan=0.0) * (255.0 / vmax), 0, 255)
    return cv2.applyColorMap(level.astype(np.uint8), cv2.COLORMAP_JET)


def blend_heatmap(
    frame: np.ndarray, anomaly_map: np.ndarray, *, alpha: float = 0.65, vmax: float = HEATMAP_MAX
) -> np.ndarray:
    """The frame with the colourised map laid over it, opaque where the map is high and clear where it is ~0.

    The per-pixel weight is `alpha * sqrt(clip(map, 0, 1))`: a good part stays readable, anything approaching the
    threshold glows. The map (model size) is resized to the frame with bilinear interpolation.
    """
    h, w = frame.shape[:2]
    amap: np.ndarray = np.asarray(anomaly_map, np.float32).reshape(np.asarray(anomaly_map).shape[-2:])
    if amap.shape != (h, w):
        amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = colorize(amap, vmax=vmax).astype(np.float32)
    weight = (alpha * np.sqrt(np.clip(np.nan_to_num(amap, nan=0.0), 0.0, 1.0)))[..., None]
    out = frame.astype(np.float32) * (1.0 - weight) + colour * weight
    return np.clip(out, 0, 255).astype(np.uint8)


def _bbox(region: Any) -> tuple[int, int, int, int]:
    box = region["bbox"] if isinstance(region, Mapping) else region.bbox
    x, y, w, h = (int(round(v)) for v in box)
    return x, y, w, h


def draw_regions(
    image: np.ndarray, regions: Iterable[Any], *, scale: tuple[float, float] = (1.0, 1.0), label: bool = True
) -> np.ndarray:
    """Boxes for defect regions (dicts with `bbox` [x, y, w, h] or `Region`s), scaled from frame to image pixels."""
    out = image.copy()
    sx, sy = scale
    thick = max(1, round(min(out.shape[:2]) / 240))
    for region in regions:
        x, y, w, h = _bbox(region)
        p0 = (round(x * sx), round(y * sy))
        p1 = (round((x + w) * sx) - 1, round((y + h) * sy) - 1)
        cv2.rectangle(out, p0, p1, REGION_COLOUR, thick, cv2.LINE_8)
        score = region.get("max_score") if isinstance(region, Mapping) else getattr(region, "max_score", None)
        if label and score is not None:
            cv2.putText(out, f"{float(score):.2f}", (p0[0], max(10, p0[1] - 3)), FONT, 0.4, REGION_COLOUR, 1,
                        cv2.LINE_AA)
    return out


def fmt_num(value: Any, spec: str = ".2f") -> str:
    """A number for display, "-" for None (error verdicts have no score)."""
    return "-" if value is None else format(float(value), spec)


def banner_text(header: Mapping[str, Any]) -> str:
    """`FAIL  score 1.37 / 1.00  seq 42` (or the error's cause)."""
    kind = str(header.get("verdict", "?")).upper()
    if kind == "ERROR":
        return f"ERROR  {str(header.get('error') or '')[:60]}  seq {header.get('seq', '-')}"
    score, threshold = fmt_num(header.get("score")), fmt_num(header.get("threshold", THRESHOLD))
    return f"{kind}  score {score} / {threshold}  seq {header.get('seq', '-')}"


def add_banner(image: np.ndarray, text: str, kind: str) -> np.ndarray:
    """A coloured band with `text` stacked above the image (the frame itself stays unobscured)."""
    h, w = image.shape[:2]
    band = np.empty((BANNER_H, w, 3), np.uint8)
    band[:] = COLOURS.get(kind, COLOURS["waiting"])
    scale = 0.7 if w >= 360 else 0.45
    cv2.putText(band, text, (8, BANNER_H - 11), FONT, scale, (255, 255, 255), 2 if w >= 360 else 1, cv2.LINE_AA)
    return np.vstack([band, image])


def draw_text_lines(image: np.ndarray, lines: Sequence[str], *, origin: tuple[int, int] = (6, 6)) -> np.ndarray:
    """White text on a dark translucent box in the top-left corner (FPS, latency, status)."""
    out = image.copy()
    if not lines:
        return out
    scale, step = 0.45, 16
    width = max(cv2.getTextSize(line, FONT, scale, 1)[0][0] for line in lines) + 8
    x0, y0 = origin
    x1, y1 = min(out.shape[1], x0 + width), min(out.shape[0], y0 + step * len(lines) + 6)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = (out[y0:y1, x0:x1].astype(np.float32) * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(out, line, (x0 + 4, y0 + step * (i + 1)), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def fit_width(image: np.ndarray, width: int) -> np.ndarray:
    """Resize to `width` keeping the aspect ratio (INTER_AREA down, INTER_LINEAR up)."""
    h, w = image.shape[:2]
    if w == width:
        return image
    interp = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
    return cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=interp)


def render_frame(
    frame: np.ndarray | None,
    anomaly_map: np.ndarray | None,
    header: Mapping[str, Any],
    *,
    overlay: bool = True,
    width: int | None = None,
    banner: bool = True,
    lines: Sequence[str] = (),
) -> np.ndarray:
    """One verdict drawn: frame (+ heatmap) scaled to `width`, region boxes, banner, optional text lines.

    `header["frame_size"]` ([w, h] of the captured frame, in which region boxes are given) is used when the frame
    image was downscaled; without it the image is taken to be the captured size.
    """
    if frame is None:
        shape = anomaly_map.shape[-2:] if anomaly_map is not None else (240, 320)
        frame = np.zeros((*shape, 3), np.uint8)
    img = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if overlay and anomaly_map is not None:
        img = blend_heatmap(img, anomaly_map)
    orig_w, orig_h = header.get("frame_size") or (frame.shape[1], frame.shape[0])
    if width is not None:
        img = fit_width(img, width)
    scale = (img.shape[1] / max(1, orig_w), img.shape[0] / max(1, orig_h))
    img = draw_regions(img, header.get("regions") or (), scale=scale, label=overlay)
    if lines:
        img = draw_text_lines(img, lines)
    if banner:
        img = add_banner(img, banner_text(header), str(header.get("verdict", "waiting")))
    return img


def failed_strip(thumbs: Sequence[np.ndarray], *, width: int, n: int, caption: str = "last failed") -> np.ndarray:
    """A row of `n` equal cells (newest first) holding the failed-frame thumbnails, with a caption bar above."""
    n = max(1, n)
    cell_w = max(8, width // n)
    cell_h = max(8, round(cell_w * 0.75))
    row: np.ndarray = np.full((cell_h, cell_w * n, 3), 30, np.uint8)
    for i, thumb in enumerate(list(thumbs)[:n]):
        th, tw = thumb.shape[:2]
        s = min((cell_w - 4) / tw, (cell_h - 4) / th)
        small = cv2.resize(thumb, (max(1, int(tw * s)), max(1, int(th * s))), interpolation=cv2.INTER_AREA)
        y0 = (cell_h - small.shape[0]) // 2
        x0 = i * cell_w + (cell_w - small.shape[1]) // 2
        row[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
    if row.shape[1] != width:
        row = cv2.resize(row, (width, cell_h), interpolation=cv2.INTER_AREA)
    bar = np.full((18, width, 3), 50, np.uint8)
    cv2.putText(bar, caption, (6, 13), FONT, 0.42, (220, 220, 220), 1, cv2.LINE_AA)
    return np.vstack([bar, row])


def waiting_view(width: int, height: int, text: str, last: np.ndarray | None = None) -> np.ndarray:
    """A grey "waiting for daemon" screen, over a dimmed copy of the last view when there is one."""
    if last is not None:
        img = (fit_width(last, width).astype(np.float32) * 0.35).astype(np.uint8)
    else:
        img = np.full((height, width, 3), 40, np.uint8)
    (tw, th), _ = cv2.getTextSize(text, FONT, 0.8, 2)
    org = (max(4, (img.shape[1] - tw) // 2), max(th + 4, img.shape[0] // 2))
    cv2.putText(img, text, org, FONT, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
    return img


def contact_sheet(panels: Sequence[np.ndarray], *, columns: int = 4, width: int = 1280, gap: int = 6) -> np.ndarray:
    """Tile panels (each scaled to the column width) into one image, row by row, on a dark background."""
    if not panels:
        return np.full((60, width, 3), 40, np.uint8)
    columns = max(1, min(columns, len(panels)))
    cell_w = (width - gap * (columns + 1)) // columns
    cells = [fit_width(p, cell_w) for p in panels]
    rows = []
    for start in range(0, len(cells), columns):
        chunk = cells[start : start + columns]
        row_h = max(c.shape[0] for c in chunk)
        row = np.full((row_h + gap, width, 3), 40, np.uint8)
        for i, cell in enumerate(chunk):
            x0 = gap + i * (cell_w + gap)
            row[gap : gap + cell.shape[0], x0 : x0 + cell.shape[1]] = cell
        rows.append(row)
    return np.vstack([*rows, np.full((gap, width, 3), 40, np.uint8)])
