"""Drawings people read: the one drawing module behind training debug images (``mtl.viz``), ``mtl infer
--overlay`` (``mtl.runtime.postprocess.overlay``), ``mtl viz --data`` and ``mtl report``.

numpy + PIL only: the torch-free runtime draws with it, so nothing here imports matplotlib or torch.

- Camera overlays (``camera_overlay``): a title (frame id, model, score threshold), semantic colours, 3D
  boxes projected into the image, coloured by class and labelled ``class score``, and a legend.
- BEV views (``bev_view``): LiDAR points (or the occupancy raster), predicted boxes (outlined, labelled),
  ground-truth boxes (shaded) when the data has them, the ego car, range rings, both axes labelled in metres.
- Heatmap panels (``heatmap_panels``): one row per detection class (GT | predicted | difference), each
  panel naming its class, both axes labelled, with a colour scale.
- Semantic maps: ``semantic_palette`` (A2D2 colours), ``colorize_semantic`` (the coloured twin of a class-id
  map, same size), ``overlay_semantic``.

Orientation of every BEV image (``bev_display``): the grid's row index follows x (forward) and its column
index follows y (left, column 0 = most negative y = rightmost), see ``mtl.geometry``. Images show it like a
driver's view from above: x forward UP, y left LEFT, the ego car at the bottom centre.

Fonts: Pillow's scalable default font (``ImageFont.load_default(size=...)``, Pillow >= 10.1 with FreeType),
else DejaVu Sans from matplotlib's data folder or the system, else Pillow's bitmap font; sizes are chosen
to be readable at 100 % zoom (``TITLE_PT``, ``LABEL_PT``, ``SMALL_PT``).
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from .config import ClassesConfig, GridConfig, a2d2_classes
from .geometry import box_corners_bev, project_points, scale_cam_matrix

TITLE_PT, LABEL_PT, SMALL_PT = 17, 14, 12
MAX_LABELS = 12                     # text labels per picture (the best scores); every box is still drawn
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (110, 110, 110)
EGO_COLOUR = (0, 120, 255)
# one colour per detection class id (car, truck, pedestrian, cyclist, ...): bright, distinct from each other
# and drawn with a dark halo, so they read on camera pixels and on the semantic colours alike
DET_COLOURS = ((0, 200, 255), (255, 150, 0), (255, 40, 210), (110, 235, 40), (255, 235, 0), (170, 120, 255))
# matplotlib's tab20, for semantic groups without an A2D2 colour
TAB20 = ((31, 119, 180), (174, 199, 232), (255, 127, 14), (255, 187, 120), (44, 160, 44), (152, 223, 138),
         (214, 39, 40), (255, 152, 150), (148, 103, 189), (197, 176, 213), (140, 86, 75), (196, 156, 148),
         (227, 119, 194), (247, 182, 210), (127, 127, 127), (199, 199, 199), (188, 189, 34), (219, 219, 141),
         (23, 190, 207), (158, 218, 229))
# colour maps as anchors (value 0..1 -> RGB), interpolated linearly: matplotlib's inferno and RdBu_r
COLORMAPS = {
    "inferno": ((0, 0, 4), (33, 12, 74), (87, 16, 110), (138, 34, 106), (188, 55, 84), (228, 90, 49),
                (249, 142, 9), (249, 203, 53), (252, 255, 164)),
    "diverging": ((5, 48, 97), (42, 113, 178), (107, 172, 209), (194, 221, 236), (247, 246, 246),
                  (251, 204, 180), (228, 128, 102), (186, 40, 50), (103, 0, 31)),
}


# ------------------------------------------------------------------------------------------ fonts, text


@lru_cache(maxsize=16)
def font(size: int = LABEL_PT):
    """A scalable font of ``size`` pixels (see the module docstring for the order tried)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, ImportError, OSError):   # Pillow < 10.1 or no FreeType
        pass
    for path in _ttf_candidates():
        try:
            return ImageFont.truetype(str(path), size)
        except OSError:
            continue
    return ImageFont.load_default()


def _ttf_candidates() -> list[Path]:
    paths = []
    spec = importlib.util.find_spec("matplotlib")               # locates the package without importing it
    if spec is not None and spec.origin:
        paths.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf")
    paths.append(Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"))
    return [p for p in paths if p.is_file()]


def text_size(text: str, size: int = LABEL_PT) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` drawn at ``size``."""
    left, top, right, bottom = font(size).getbbox(text)
    return int(right - min(left, 0)), int(bottom - min(top, 0))


def _text(draw, xy: tuple[float, float], text: str, size: int = LABEL_PT, fill=BLACK, bg=None, pad: int = 2):
    """Text at ``xy`` (top-left), on a ``bg`` box when given (labels over pictures)."""
    x, y = int(xy[0]), int(xy[1])
    if bg is not None:
        w, h = text_size(text, size)
        draw.rectangle([x - pad, y - pad, x + w + pad, y + h + pad], fill=bg)
    draw.text((x, y), text, fill=fill, font=font(size))


def _contrast(colour: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads on ``colour``."""
    r, g, b = (int(c) for c in colour[:3])
    return BLACK if 0.299 * r + 0.587 * g + 0.114 * b > 140 else WHITE


def _wrap(text: str, width: int, size: int) -> list[str]:
    """Words of ``text`` greedily wrapped into lines narrower than ``width`` pixels."""
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}".strip()
        if line and text_size(candidate, size)[0] > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line] if line else lines


def title_bar(text: str, width: int, size: int = TITLE_PT) -> np.ndarray:
    """(h, width, 3) white strip with ``text`` in bold-ish black, wrapped onto as many lines as needed."""
    from PIL import Image, ImageDraw

    lines = _wrap(text, width - 12, size) or [""]
    line_h = text_size("Ag", size)[1] + 5
    img = Image.new("RGB", (width, line_h * len(lines) + 8), WHITE)
    d = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        _text(d, (6, 4 + i * line_h), line, size)
    return np.asarray(img)


def vertical_text(text: str, size: int = LABEL_PT) -> np.ndarray:
    """``text`` rotated 90 degrees counter-clockwise (reads bottom to top), (h, w, 3) on white."""
    from PIL import Image, ImageDraw

    w, h = text_size(text, size)
    img = Image.new("RGB", (w + 4, h + 4), WHITE)
    _text(ImageDraw.Draw(img), (2, 1), text, size)
    return np.asarray(img.rotate(90, expand=True, fillcolor=WHITE))


def placeholder(text: str, hw: tuple[int, int]) -> np.ndarray:
    """A light grey (h, w, 3) panel saying ``text`` (a modality a frame does not have)."""
    from PIL import Image, ImageDraw

    h, w = hw
    img = Image.new("RGB", (w, h), (235, 235, 235))
    d = ImageDraw.Draw(img)
    lines = _wrap(text, w - 20, LABEL_PT)
    line_h = text_size("Ag", LABEL_PT)[1] + 4
    y0 = h // 2 - line_h * len(lines) // 2
    for i, line in enumerate(lines):
        _text(d, ((w - text_size(line)[0]) // 2, y0 + i * line_h), line, LABEL_PT, fill=GREY)
    d.rectangle([0, 0, w - 1, h - 1], outline=(190, 190, 190))
    return np.asarray(img)


# ------------------------------------------------------------------------------------------ layout


def hstack(panels: Sequence[np.ndarray], gap: int = 10) -> np.ndarray:
    """Panels side by side, top-aligned, on white."""
    h = max(p.shape[0] for p in panels)
    parts = []
    for i, p in enumerate(panels):
        parts.append(np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255))
        if i + 1 < len(panels):
            parts.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(parts, 1)


def vstack(panels: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """Panels one below the other, left-aligned, on white."""
    w = max(p.shape[1] for p in panels)
    parts = []
    for i, p in enumerate(panels):
        parts.append(np.pad(p, ((0, 0), (0, w - p.shape[1]), (0, 0)), constant_values=255))
        if i + 1 < len(panels):
            parts.append(np.full((gap, w, 3), 255, np.uint8))
    return np.concatenate(parts, 0)


def with_title(panel: np.ndarray, text: str, size: int = TITLE_PT) -> np.ndarray:
    return vstack([title_bar(text, panel.shape[1], size), panel], gap=0)


def legend(entries: Sequence[tuple[str, Sequence[int], str]], width: int, size: int = SMALL_PT) -> np.ndarray:
    """(h, width, 3) legend: one swatch + name per entry, wrapped into rows. An entry is ``(name, colour,
    style)`` with style ``fill`` (a filled square), ``outline`` (an open square), ``shade`` (a light filled
    square with an outline: ground truth in BEV views) or ``ego`` (a triangle)."""
    from PIL import Image, ImageDraw

    sw, row_h = size, text_size("Ag", size)[1] + 8
    placed, x, y = [], 6, 4
    for name, colour, style in entries:
        item_w = sw + 5 + text_size(name, size)[0] + 14
        if x + item_w > width - 4 and x > 6:
            x, y = 6, y + row_h
        placed.append((x, y, name, tuple(int(c) for c in colour), style))
        x += item_w
    img = Image.new("RGB", (max(width, 1), y + row_h + 2), WHITE)
    d = ImageDraw.Draw(img)
    for x, y, name, colour, style in placed:
        box = [x, y + 2, x + sw, y + 2 + sw]
        if style == "outline":
            d.rectangle(box, outline=BLACK, width=4)
            d.rectangle([box[0] + 1, box[1] + 1, box[2] - 1, box[3] - 1], outline=colour, width=2)
        elif style == "shade":
            light = tuple(int(255 - (255 - c) * 0.4) for c in colour)
            d.rectangle(box, fill=light, outline=colour, width=1)
        elif style == "ego":
            d.polygon([(x + sw / 2, y + 2), (x, y + 2 + sw), (x + sw, y + 2 + sw)], fill=colour, outline=BLACK)
        else:
            d.rectangle(box, fill=colour, outline=BLACK)
        _text(d, (x + sw + 5, y + 1), name, size)
    return np.asarray(img)


# ------------------------------------------------------------------------------------------ colours


def det_colour(label: int) -> tuple[int, int, int]:
    """The drawing colour of detection class id ``label`` (ignored / unknown ids: grey)."""
    return DET_COLOURS[int(label) % len(DET_COLOURS)] if int(label) >= 0 else (150, 150, 150)


def class_name(names: Sequence[str], label: int) -> str:
    label = int(label)
    return names[label] if 0 <= label < len(names) else ("ignored" if label < 0 else str(label))


def apply_colormap(values: np.ndarray, name: str, vmin: float, vmax: float) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 through ``COLORMAPS[name]`` over [vmin, vmax] (NaN -> vmin)."""
    anchors = np.asarray(COLORMAPS[name], np.float64)
    v = np.nan_to_num(np.asarray(values, np.float64), nan=vmin)
    t = np.clip((v - vmin) / (vmax - vmin), 0.0, 1.0) * (len(anchors) - 1)
    i = np.minimum(t.astype(np.int64), len(anchors) - 2)
    f = (t - i)[..., None]
    return (anchors[i] * (1 - f) + anchors[i + 1] * f + 0.5).astype(np.uint8)


def colourbar(name: str, vmin: float, vmax: float, width: int, label: str) -> np.ndarray:
    """A horizontal colour scale ``width`` wide: the gradient, its end values and what it shows."""
    from PIL import Image, ImageDraw

    bar = apply_colormap(np.tile(np.linspace(vmin, vmax, max(width - 120, 20)), (10, 1)), name, vmin, vmax)
    img = Image.new("RGB", (width, 34), WHITE)
    img.paste(Image.fromarray(bar), (60, 4))
    d = ImageDraw.Draw(img)
    lo, hi = f"{vmin:g}", f"{vmax:g}"
    _text(d, (56 - text_size(lo, SMALL_PT)[0], 1), lo, SMALL_PT)
    _text(d, (60 + bar.shape[1] + 4, 1), hi, SMALL_PT)
    _text(d, (60, 16), label, SMALL_PT, fill=GREY)
    return np.asarray(img)


def semantic_palette(classes_cfg: ClassesConfig) -> np.ndarray:
    """(256, 3) uint8 colour per training class id: the A2D2 colour of the first member of the class's
    ``sem_groups`` entry (e.g. car -> 'Car 1' -> #ff0000). Ids without a class (incl. 255) are black.
    Groups whose first member is not an A2D2 name get a tab20 colour."""
    name_to_hex: dict[str, str] = {}
    for hx, name in a2d2_classes()["a2d2_colours"].items():
        name_to_hex.setdefault(name, hx)
    pal = np.zeros((256, 3), np.uint8)
    for i, (_, members) in enumerate(classes_cfg.sem_groups[:255]):
        hx = name_to_hex.get(members[0]) if members else None
        pal[i] = [int(hx[k: k + 2], 16) for k in (1, 3, 5)] if hx is not None else TAB20[i % len(TAB20)]
    pal[classes_cfg.ignore_index % 256] = 0
    return pal


def colorize_semantic(ids: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours (ids outside 0..255 -> black): the coloured twin of a
    class-id map (``<id>_sem.png`` stays the machine-readable ids; this is what a person looks at)."""
    ids = np.asarray(ids)
    valid = (ids >= 0) & (ids <= 255)
    out = np.asarray(palette, np.uint8)[np.where(valid, ids, 255).astype(np.int64)]
    if not valid.all():
        out[~valid] = 0
    return out


def resize_nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (H, W[, C]) to ``hw`` (class-id maps must not be interpolated)."""
    if a.shape[:2] == tuple(hw):
        return a
    r = (np.arange(hw[0]) * a.shape[0] // hw[0]).astype(np.int64)
    c = (np.arange(hw[1]) * a.shape[1] // hw[1]).astype(np.int64)
    return a[r[:, None], c[None, :]]


def overlay_semantic(image_rgb: np.ndarray, ids: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
                     ignore_index: int = 255) -> np.ndarray:
    """Alpha-blend the colourised ``ids`` on an (H, W, 3) uint8 image; ignore pixels stay unblended.
    ``ids`` of another size is resized (nearest) to the image. Returns (H, W, 3) uint8."""
    img = np.asarray(image_rgb, np.uint8)
    ids = resize_nearest(np.asarray(ids), img.shape[:2])
    col = colorize_semantic(ids, palette).astype(np.float32)
    out = img.astype(np.float32) * (1.0 - alpha) + col * alpha
    out = np.where((ids == ignore_index)[..., None], img, out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def semantic_legend_entries(ids: np.ndarray | None, names: Sequence[str], palette: np.ndarray,
                            top: int = 12) -> list[tuple[str, Sequence[int], str]]:
    """Legend entries of the classes present in ``ids`` (most pixels first, at most ``top``); all classes
    when ``ids`` is None."""
    if ids is None:
        order = list(range(len(names)))
    else:
        counts = np.bincount(np.asarray(ids).reshape(-1).astype(np.int64).clip(0, 255), minlength=256)
        order = [int(i) for i in np.argsort(-counts[: len(names)], kind="stable") if counts[i] > 0][:top]
    return [(names[i], palette[i], "fill") for i in order]


# ------------------------------------------------------------------------------------------ camera view


def box_edges_image(boxes: np.ndarray, k: np.ndarray) -> list[list[tuple]]:
    """Image-plane segments ((u, v), (u, v)) of each box's 12 edges whose two ends lie in front of the
    camera (depth > 0.5 m). ``boxes`` (M, 7) in the camera view frame, ``k`` the image's intrinsics."""
    segs: list[list[tuple]] = []
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    for b, c4 in zip(boxes, box_corners_bev(boxes)):
        z0, z1 = b[2] - b[5] / 2, b[2] + b[5] / 2
        corners = np.concatenate([np.column_stack([c4, np.full(4, z0)]), np.column_stack([c4, np.full(4, z1)])])
        u, v, depth = project_points(corners, k)
        edges = [(i, (i + 1) % 4) for i in range(4)] + [(4 + i, 4 + (i + 1) % 4) for i in range(4)] + \
                [(i, i + 4) for i in range(4)]
        segs.append([((u[a], v[a]), (u[e], v[e])) for a, e in edges if depth[a] > 0.5 and depth[e] > 0.5])
    return segs


def _dashed(draw, a, b, fill, width: int = 1, dash: float = 7.0, gap: float = 5.0) -> None:
    (x0, y0), (x1, y1) = a, b
    n = math.hypot(x1 - x0, y1 - y0)
    if not np.isfinite(n) or n > 1e5:
        return
    t = 0.0
    while t < n:
        t1 = min(t + dash, n)
        draw.line([(x0 + (x1 - x0) * t / n, y0 + (y1 - y0) * t / n),
                   (x0 + (x1 - x0) * t1 / n, y0 + (y1 - y0) * t1 / n)], fill=fill, width=width)
        t = t1 + gap


def labelled(scores: np.ndarray | None, n: int, limit: int = MAX_LABELS) -> set[int]:
    """Indices of the boxes that get a text label: the ``limit`` best scores (all when fewer); the others
    are outlined only, so a crowded frame stays readable."""
    if scores is None or n <= limit:
        return set(range(min(n, limit)))
    return {int(i) for i in np.argsort(-np.asarray(scores, np.float64), kind="stable")[:limit]}


def _draw_camera_boxes(draw, boxes, labels, scores, k, names, hw, ground_truth: bool) -> set[int]:
    """Projected box edges (predictions: solid with a dark halo + ``class score`` label for the best
    ``MAX_LABELS``; ground truth: dashed + ``GT class``), labels drawn last. Returns the class ids drawn."""
    drawn: dict[int, tuple[list, int]] = {}
    h, w = hw
    for i, segs in enumerate(box_edges_image(boxes, k)):
        pts = [p for s in segs for p in s]
        if not pts or not any(0 <= u < w and 0 <= v < h for u, v in pts):
            continue
        lab = int(labels[i])
        colour = det_colour(lab)
        for a, b in segs:
            if ground_truth:
                _dashed(draw, a, b, colour, width=2)
            else:
                draw.line([a, b], fill=BLACK, width=4)
                draw.line([a, b], fill=colour, width=2)
        drawn[i] = (pts, lab)
    for i in sorted(labelled(scores, len(boxes)) & set(drawn)):
        pts, lab = drawn[i]
        top = min(pts, key=lambda p: p[1])
        text = f"GT {class_name(names, lab)}" if ground_truth else \
            f"{class_name(names, lab)} {float(scores[i]):.2f}" if scores is not None else class_name(names, lab)
        tw, th = text_size(text, SMALL_PT)
        x = float(np.clip(top[0] - tw / 2, 2, max(w - tw - 2, 2)))
        y = float(np.clip(top[1] - th - 6, 2, max(h - th - 2, 2)))
        _text(draw, (x, y), text, SMALL_PT, fill=_contrast(det_colour(lab)), bg=det_colour(lab))
    return {lab for _, lab in drawn.values()}


def camera_overlay(image: np.ndarray, k: np.ndarray, *, semantic: np.ndarray | None = None,
                   palette: np.ndarray | None = None, sem_names: Sequence[str] = (),
                   boxes: np.ndarray | None = None, labels: np.ndarray | None = None,
                   scores: np.ndarray | None = None, gt_boxes: np.ndarray | None = None,
                   gt_labels: np.ndarray | None = None, det_names: Sequence[str] = (), title: str = "",
                   alpha: float = 0.45, ignore_index: int = 255, min_width: int = 512) -> np.ndarray:
    """The camera image with the semantic map blended in, projected 3D boxes (predictions solid and
    labelled ``class score``; ground truth dashed, ``GT class``), a title and a legend. ``k`` is the
    intrinsics of ``image``; images narrower than ``min_width`` are upscaled (integer factor) so the labels
    fit. Returns (H', W', 3) uint8."""
    from PIL import Image, ImageDraw

    img = np.asarray(image, np.uint8)
    h, w = img.shape[:2]
    f = max(1, math.ceil(min_width / w))
    if f > 1:
        img = np.asarray(Image.fromarray(img).resize((w * f, h * f), Image.BILINEAR))
        k = scale_cam_matrix(k, (w, h), (h * f, w * f))
    if semantic is not None and palette is not None:
        img = overlay_semantic(img, semantic, palette, alpha=alpha, ignore_index=ignore_index)
    canvas = Image.fromarray(np.ascontiguousarray(img))
    d = ImageDraw.Draw(canvas)
    hw = img.shape[:2]
    gt = _draw_camera_boxes(d, _boxes(gt_boxes), _ids(gt_labels, gt_boxes), None, k, det_names, hw, True) \
        if gt_boxes is not None else set()
    pred = _draw_camera_boxes(d, _boxes(boxes), _ids(labels, boxes), scores, k, det_names, hw, False) \
        if boxes is not None else set()
    entries = [(f"{class_name(det_names, c)} box", det_colour(c), "outline") for c in sorted(pred | gt)]
    if len(_boxes(boxes)) > MAX_LABELS:
        entries.append((f"labels: the {MAX_LABELS} best of {len(_boxes(boxes))} boxes", GREY, "outline"))
    if gt:
        entries.append(("dashed = ground truth", GREY, "outline"))
    if semantic is not None and palette is not None and sem_names:
        entries += semantic_legend_entries(semantic, sem_names, palette)
    parts = [np.asarray(canvas)]
    if entries:
        parts.append(legend(entries, canvas.width))
    out = vstack(parts, gap=0)
    return with_title(out, title) if title else out


def _boxes(b) -> np.ndarray:
    return np.zeros((0, 7)) if b is None else np.asarray(b, np.float64).reshape(-1, 7)


def _ids(labels, boxes) -> np.ndarray:
    n = len(_boxes(boxes))
    return np.zeros(n, np.int64) if labels is None else np.asarray(labels).reshape(-1).astype(np.int64)


# ------------------------------------------------------------------------------------------ BEV view


def bev_display(array: np.ndarray) -> np.ndarray:
    """Turn a BEV grid array (H, W) or (H, W, C) (row = x forward, column = y left, column 0 rightmost)
    into display orientation: x forward UP (flip rows), y left LEFT (flip columns); ego at bottom centre."""
    return np.asarray(array)[::-1, ::-1]


def bev_display_pixel(x: np.ndarray | float, y: np.ndarray | float, grid: GridConfig,
                      shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Float (row, col) in a ``bev_display``-ed image of ``shape`` (H, W) covering ``grid``, of metric (x, y)."""
    h, w = shape
    row = (grid.x_max - np.asarray(x, np.float64)) / (grid.x_max - grid.x_min) * h
    col = (grid.y_max - np.asarray(y, np.float64)) / (grid.y_max - grid.y_min) * w
    return row, col


FRAME_LEFT, FRAME_TOP, FRAME_RIGHT, FRAME_BOTTOM = 64, 28, 12, 50   # margins of ``bev_frame``


def bev_frame(map_rgb: np.ndarray, grid: GridConfig, title: str, tick_m: float = 10.0) -> np.ndarray:
    """Frame a display-oriented BEV image (covering ``grid``) with a title, metre ticks on both axes and both
    axis names: x [m] forward on the left (up), y [m] left at the bottom (increasing to the LEFT). The map's
    top-left pixel lands at (``FRAME_TOP``, ``FRAME_LEFT``)."""
    from PIL import Image, ImageDraw

    h, w = map_rgb.shape[:2]
    canvas = Image.new("RGB", (FRAME_LEFT + w + FRAME_RIGHT, FRAME_TOP + h + FRAME_BOTTOM), WHITE)
    canvas.paste(Image.fromarray(np.ascontiguousarray(map_rgb)), (FRAME_LEFT, FRAME_TOP))
    d = ImageDraw.Draw(canvas)
    _text(d, (FRAME_LEFT, 5), _fit(title, w + FRAME_RIGHT, LABEL_PT), LABEL_PT)
    d.rectangle([FRAME_LEFT - 1, FRAME_TOP - 1, FRAME_LEFT + w, FRAME_TOP + h], outline=GREY)
    for xv in np.arange(math.ceil(grid.x_min / tick_m) * tick_m, grid.x_max + 1e-6, tick_m):
        r = FRAME_TOP + round(float(bev_display_pixel(xv, 0.0, grid, (h, w))[0]))
        d.line([FRAME_LEFT - 5, r, FRAME_LEFT - 1, r], fill=BLACK)
        s = f"{xv:g}"
        tw, th = text_size(s, SMALL_PT)
        _text(d, (FRAME_LEFT - 8 - tw, min(max(r - th // 2 - 2, FRAME_TOP - 6), FRAME_TOP + h - th)), s, SMALL_PT)
    for yv in np.arange(math.ceil(grid.y_min / tick_m) * tick_m, grid.y_max + 1e-6, tick_m):
        c = FRAME_LEFT + round(float(bev_display_pixel(grid.x_min, yv, grid, (h, w))[1]))
        d.line([c, FRAME_TOP + h, c, FRAME_TOP + h + 4], fill=BLACK)
        s = f"{yv:g}"
        _text(d, (c - text_size(s, SMALL_PT)[0] // 2, FRAME_TOP + h + 6), s, SMALL_PT)
    ylab = "y [m]  (+ = left of the car)"
    _text(d, (FRAME_LEFT + (w - text_size(ylab, SMALL_PT)[0]) // 2, FRAME_TOP + h + 26), ylab, SMALL_PT)
    xlab = vertical_text("x [m]  (+ = ahead)", SMALL_PT)
    top = FRAME_TOP + max((h - xlab.shape[0]) // 2, 0)
    canvas.paste(Image.fromarray(xlab[: h]), (2, top))
    return np.asarray(canvas)


def _fit(text: str, width: int, size: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if text_size(text, size)[0] <= width:
        return text
    while text and text_size(text + "\u2026", size)[0] > width:
        text = text[:-1]
    return text + "\u2026"


def _bev_points_layer(h: int, w: int, grid: GridConfig, points: np.ndarray | None,
                      occupancy: np.ndarray | None) -> np.ndarray:
    """White map with LiDAR hits in grey (darker = more points per pixel). (h, w, 3) uint8."""
    density = np.zeros((h, w), np.float32)
    if points is not None and len(points):
        p = np.asarray(points, np.float64)
        p = p[np.isfinite(p[:, :2]).all(1)]
        r, c = bev_display_pixel(p[:, 0], p[:, 1], grid, (h, w))
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        np.add.at(density, (r[ok].astype(np.int64), c[ok].astype(np.int64)), 1.0)
        if h >= 2 * grid.shape[0]:               # sparse clouds on a large map: 2x2 dots stay visible
            density = density + np.roll(density, 1, 0) + np.roll(density, 1, 1) + np.roll(density, (1, 1), (0, 1))
    elif occupancy is not None:
        occ = (bev_display(np.asarray(occupancy, np.float32)) > 0).astype(np.float32)
        density = resize_nearest(occ, (h, w)) * 2.0
    shade = np.where(density > 0, 150.0 - np.minimum(density - 1.0, 4.0) * 25.0, 255.0)
    return np.repeat(shade[..., None], 3, -1).astype(np.uint8)


def _bev_polygon(box: np.ndarray, grid: GridConfig, hw: tuple[int, int]) -> list[tuple[float, float]]:
    c4 = box_corners_bev(box[None])[0]
    r, c = bev_display_pixel(c4[:, 0], c4[:, 1], grid, hw)
    return [(float(cc), float(rr)) for rr, cc in zip(r, c)]


def _draw_rings(d, grid: GridConfig, hw: tuple[int, int], step: float) -> None:
    h, w = hw
    er, ec = bev_display_pixel(0.0, 0.0, grid, hw)
    ppm = h / (grid.x_max - grid.x_min)
    far = math.hypot(max(abs(grid.x_min), abs(grid.x_max)), max(abs(grid.y_min), abs(grid.y_max)))
    for radius in np.arange(step, far + 1e-6, step):
        rp = radius * ppm
        d.ellipse([ec - rp, er - rp, ec + rp, er + rp], outline=(170, 200, 230), width=1)
        label = f"{radius:g} m"
        tr = er - rp                                  # the ring's point straight ahead of the ego
        if 0 <= tr < h - 10:
            _text(d, (ec + 4, tr + 2), label, SMALL_PT, fill=(70, 100, 150), bg=WHITE, pad=1)


def bev_view(grid: GridConfig, *, points: np.ndarray | None = None, occupancy: np.ndarray | None = None,
             boxes: np.ndarray | None = None, labels: np.ndarray | None = None, scores: np.ndarray | None = None,
             gt_boxes: np.ndarray | None = None, gt_labels: np.ndarray | None = None,
             det_names: Sequence[str] = (), title: str = "", size: int = 512, ring_step: float = 10.0,
             with_legend: bool = True) -> np.ndarray:
    """Bird's-eye view of ``grid``: LiDAR ``points`` (N, >=2) (or an ``occupancy`` raster (H, W) in grid
    orientation), ground-truth boxes shaded in their class colour, predicted boxes outlined in their class
    colour with a heading tick and a ``class score`` label, the ego car (triangle), range rings every
    ``ring_step`` m, metre ticks and axis names, and a legend. The longer map side is ``size`` pixels."""
    from PIL import Image, ImageDraw

    ex, ey = grid.x_max - grid.x_min, grid.y_max - grid.y_min
    ppm = size / max(ex, ey)
    hw = (round(ex * ppm), round(ey * ppm))
    base = Image.fromarray(_bev_points_layer(*hw, grid, points, occupancy))
    _draw_rings(ImageDraw.Draw(base), grid, hw, ring_step)
    gtb, gtl = _boxes(gt_boxes), _ids(gt_labels, gt_boxes)
    pb, pl = _boxes(boxes), _ids(labels, boxes)
    if len(gtb):
        shade = Image.new("RGBA", base.size, (0, 0, 0, 0))
        sd = ImageDraw.Draw(shade)
        for b, lab in zip(gtb, gtl):
            sd.polygon(_bev_polygon(b, grid, hw), fill=det_colour(lab) + (95,), outline=det_colour(lab) + (255,))
        base = Image.alpha_composite(base.convert("RGBA"), shade).convert("RGB")
    d = ImageDraw.Draw(base)
    if len(gtb) and not len(pb):                 # ground truth alone (a data frame): name each box
        for b, lab in zip(gtb, gtl):
            poly = _bev_polygon(b, grid, hw)
            _text(d, (max(p[0] for p in poly) + 4, min(p[1] for p in poly)), class_name(det_names, lab), SMALL_PT,
                  bg=WHITE, pad=1)
    for b, lab in zip(pb, pl):
        poly = _bev_polygon(b, grid, hw)
        front = ((poly[0][0] + poly[1][0]) / 2, (poly[0][1] + poly[1][1]) / 2)
        centre = bev_display_pixel(b[0], b[1], grid, hw)
        for width, colour in ((5, BLACK), (3, det_colour(lab))):
            d.line(poly + poly[:1], fill=colour, width=width, joint="curve")
            d.line([(float(centre[1]), float(centre[0])), front], fill=colour, width=width - 2)
    for i in sorted(labelled(scores, len(pb))):
        poly, lab = _bev_polygon(pb[i], grid, hw), pl[i]
        text = class_name(det_names, lab) + (f" {float(scores[i]):.2f}" if scores is not None else "")
        x, y = min(p[0] for p in poly), min(p[1] for p in poly)
        _text(d, (x, y - text_size(text, SMALL_PT)[1] - 5), text, SMALL_PT, fill=_contrast(det_colour(lab)),
              bg=det_colour(lab))
    _draw_ego(d, grid, hw)
    outside = int((~_in_grid(gtb, grid)).sum() + (~_in_grid(pb, grid)).sum())
    framed = bev_frame(np.asarray(base), grid, title + (f" ({outside} outside the view)" if outside else ""))
    if not with_legend:
        return framed
    classes = sorted(set(pl.tolist()) | set(gtl.tolist()))
    entries = [(class_name(det_names, c), det_colour(c), "fill") for c in classes]
    entries += [("outlined = predicted", GREY, "outline")] if len(pb) else []
    entries += [(f"labels: the {MAX_LABELS} best of {len(pb)}", GREY, "outline")] if len(pb) > MAX_LABELS else []
    entries += [("shaded = ground truth", GREY, "shade")] if len(gtb) else []
    entries += [("ego", EGO_COLOUR, "ego"), ("rings: range from ego", (170, 200, 230), "outline")]
    return vstack([framed, legend(entries, framed.shape[1])], gap=0)


def _in_grid(boxes: np.ndarray, grid: GridConfig) -> np.ndarray:
    return ((boxes[:, 0] >= grid.x_min) & (boxes[:, 0] < grid.x_max) & (boxes[:, 1] >= grid.y_min)
            & (boxes[:, 1] < grid.y_max))


def _draw_ego(d, grid: GridConfig, hw: tuple[int, int]) -> None:
    """A triangle pointing forward at x = y = 0 (kept inside the map when the ego sits on its edge)."""
    h, w = hw
    er, ec = bev_display_pixel(0.0, 0.0, grid, hw)
    er, ec = float(min(max(er, 14.0), h - 1.0)), float(ec)
    if 0 <= ec <= w:
        d.polygon([(ec, er - 14), (ec - 7, er), (ec + 7, er)], fill=EGO_COLOUR, outline=BLACK)


# ------------------------------------------------------------------------------------------ heatmaps


def heatmap_panels(gt: np.ndarray, pred_prob: np.ndarray, grid: GridConfig, class_names: Sequence[str] = (),
                   scale: int = 2, title_prefix: str = "", min_px: int = 256) -> np.ndarray:
    """One row per detection class: GT heatmap | predicted (sigmoid) | predicted - GT, each (n_det, Hh, Ww)
    in display orientation (``bev_display``), upscaled (nearest) by ``scale`` or more so a panel is at least
    ``min_px`` wide, framed by ``bev_frame`` (both axes labelled) and titled with its class; the colour
    scales below. Returns (H, W, 3) uint8."""
    g = np.asarray(gt, np.float32)
    p = np.asarray(pred_prob, np.float32)
    s = max(int(scale), math.ceil(min_px / g.shape[-1]))

    def up(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(bev_display(a), s, 0), s, 1)

    rows = []
    for c in range(g.shape[0]):
        name = class_name(class_names, c) if class_names else f"class {c}"
        diff = p[c] - g[c]
        rows.append(hstack([
            bev_frame(up(apply_colormap(g[c], "inferno", 0.0, 1.0)), grid,
                      f"{title_prefix}{name}: GT heatmap (max {g[c].max():.2f})"),
            bev_frame(up(apply_colormap(p[c], "inferno", 0.0, 1.0)), grid,
                      f"{name}: predicted (max {p[c].max():.2f})"),
            bev_frame(up(apply_colormap(diff, "diverging", -1.0, 1.0)), grid,
                      f"{name}: predicted - GT (|d| max {np.abs(diff).max():.2f})"),
        ]))
    body = vstack(rows, gap=8)
    third = body.shape[1] // 3
    scales = hstack([colourbar("inferno", 0.0, 1.0, 2 * third, "heat: 0 = no object, 1 = object centre"),
                     colourbar("diverging", -1.0, 1.0, third, "red: predicted, not in GT; blue: missed")], gap=0)
    return vstack([body, scales], gap=4)


def semantic_panels(gt_ids: np.ndarray, pred_ids: np.ndarray, palette: np.ndarray,
                    class_names: Sequence[str] = (), title: str = "", min_width: int = 384) -> np.ndarray:
    """Semantic GT | prediction, colourised, with the pixel accuracy and a legend of the classes present.
    Maps narrower than ``min_width`` are upscaled (nearest). Returns (H, W, 3) uint8."""
    gt_ids = np.asarray(gt_ids)
    pred_ids = resize_nearest(np.asarray(pred_ids), gt_ids.shape)
    valid = gt_ids != 255
    acc = float((pred_ids[valid] == gt_ids[valid]).mean()) if valid.any() else float("nan")
    f = max(1, math.ceil(min_width / gt_ids.shape[1]))
    hw = (gt_ids.shape[0] * f, gt_ids.shape[1] * f)
    top = hstack([with_title(colorize_semantic(resize_nearest(gt_ids, hw), palette),
                             "semantic ground truth (black = ignored)", LABEL_PT),
                  with_title(colorize_semantic(resize_nearest(pred_ids, hw), palette),
                             f"semantic prediction (pixel accuracy {acc:.3f})", LABEL_PT)])
    if class_names:
        ids = np.concatenate([gt_ids[valid].ravel(), pred_ids.ravel()])
        top = vstack([top, legend(semantic_legend_entries(ids, class_names, palette, top=len(class_names)),
                                  top.shape[1])], gap=0)
    return with_title(top, title) if title else top


# ------------------------------------------------------------------------------------------ files


def encode(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 drawing (compressed for sharing, unlike the fast runtime PNGs)."""
    from .io import encode_png

    return encode_png(np.ascontiguousarray(rgb, dtype=np.uint8), compress_level=6)


def save(path: str | Path, rgb: np.ndarray) -> Path:
    """Write a drawing as PNG, atomically."""
    from .io import write_bytes_atomic

    write_bytes_atomic(path, encode(rgb))
    return Path(path)


__all__ = [
    "DET_COLOURS",
    "apply_colormap",
    "bev_display",
    "bev_display_pixel",
    "bev_frame",
    "bev_view",
    "box_edges_image",
    "camera_overlay",
    "colorize_semantic",
    "colourbar",
    "det_colour",
    "font",
    "heatmap_panels",
    "hstack",
    "labelled",
    "legend",
    "overlay_semantic",
    "placeholder",
    "resize_nearest",
    "save",
    "semantic_palette",
    "semantic_panels",
    "text_size",
    "title_bar",
    "vstack",
    "with_title",
]
