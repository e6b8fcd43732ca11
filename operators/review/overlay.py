"""Overlay frames people can look at: each track id painted in its own colour, the same in
every frame (the colour is a function of the id alone), over the video frame; each thing
labelled with its track id and class name, the frame's time, and below the frame a legend of
classes (a frame's own, in a strip as tall as all the model's classes need, so that frames
rendered one at a time all have one size)."""
from __future__ import annotations

import datetime as _dt
import zlib
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from operators.formats.categories import CITYSCAPES_CATEGORIES, Category

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _stuff_colours(categories: Sequence[Category]) -> dict[int, tuple[int, int, int]]:
    return {c.id + 1: c.color for c in categories}  # the tracker's stuff ids: category + 1


_CITYSCAPES_COLOURS = _stuff_colours(CITYSCAPES_CATEGORIES)


def _stuff_of(categories: Sequence[Category]) -> dict[int, tuple[int, int, int]]:
    return _CITYSCAPES_COLOURS if categories is CITYSCAPES_CATEGORIES else _stuff_colours(categories)


@dataclass(frozen=True)
class LabelledSegment:
    """What the overlay writes beside a segment: its track id, class and ``bbox`` ``[x, y, w, h]``."""

    track_id: int
    category_id: int
    bbox: tuple[int, int, int, int]
    isthing: bool
    iscrowd: bool = False


def track_colour(track_id: int, stuff: dict[int, tuple[int, int, int]] = _CITYSCAPES_COLOURS) -> tuple[int, int, int]:
    """RGB colour of a track id: stuff (``category + 1``, in ``stuff``) in its class colour,
    things in a bright hue chosen by CRC-32 of the id, so colours agree across frames, chunks
    and runs."""
    if track_id in stuff:
        return stuff[track_id]
    h = zlib.crc32(int(track_id).to_bytes(8, "little"))
    hsv = np.array([[[h % 180, 160 + (h >> 8) % 96, 200 + (h >> 16) % 56]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


_LUT_IDS = 1 << 21
"""Below this many ids (the largest id + 1), :func:`colourise` looks colours up in a table indexed
by id; above it, it sorts the ids (``np.unique``), ~20× slower on a 2-megapixel frame."""


def colourise(ids: np.ndarray, categories: Sequence[Category] = CITYSCAPES_CATEGORIES) -> np.ndarray:
    """``(H, W) int`` track ids → ``(H, W, 3) uint8`` RGB in :func:`track_colour` (VOID black;
    stuff in the colours of ``categories``)."""
    stuff = _stuff_of(categories)
    flat = ids.ravel()
    if flat.size and 0 <= int(flat.min()) and int(flat.max()) < _LUT_IDS:
        present = np.flatnonzero(np.bincount(flat))
        table = np.zeros((int(present[-1]) + 1, 3), np.uint8)
        table[present] = np.array([track_colour(int(i), stuff) if i else (0, 0, 0) for i in present],
                                  np.uint8).reshape(-1, 3)
        return table[ids]
    present, inverse = np.unique(ids, return_inverse=True)
    palette = np.array([track_colour(int(i), stuff) if i else (0, 0, 0) for i in present],
                       np.uint8).reshape(-1, 3)
    return palette[inverse.reshape(ids.shape)]


def format_timestamp(ns: int | None) -> str:
    """A frame time for people: UTC date and time for Unix times, seconds for stream times."""
    if ns is None:
        return ""
    if ns >= 10 ** 17:  # after 1973: a wall-clock time
        moment = _dt.datetime.fromtimestamp(ns / 1e9, _dt.timezone.utc)
        return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{(ns // 1_000_000) % 1000:03d} UTC"
    return f"t = {ns / 1e9:.3f} s"


def _text(image: np.ndarray, text: str, org: tuple[int, int], scale: float, colour, background=(0, 0, 0)) -> None:
    """Text on a filled box (readable over any colour); ``org`` is the box's top-left corner."""
    thickness = max(1, int(round(scale * 2)))
    (w, h), base = cv2.getTextSize(text, _FONT, scale, thickness)
    x = int(np.clip(org[0], 0, max(0, image.shape[1] - w - 2)))
    y = int(np.clip(org[1], 0, max(0, image.shape[0] - h - base - 2)))
    cv2.rectangle(image, (x, y), (x + w + 2, y + h + base + 2), background, -1)
    cv2.putText(image, text, (x + 1, y + h + 1), _FONT, scale, colour, thickness, cv2.LINE_AA)


def legend_classes(segments: Sequence[LabelledSegment],
                   categories: Sequence[Category] = CITYSCAPES_CATEGORIES) -> list[Category]:
    """The classes of some segments (a frame's, a video's), by id: the legend's entries."""
    by_id = {c.id: c for c in categories}
    return [by_id[c] for c in sorted({s.category_id for s in segments}) if c in by_id]


def _scale(height: int) -> float:
    return max(0.3, height / 900)


def _legend_rows(classes: Sequence[Category], width: int, scale: float) -> list[list[tuple[int, Category]]]:
    """The legend's entries as rows of (x, class), wrapped at ``width``."""
    line = int(24 * scale) + 6
    thickness = max(1, int(round(scale * 2)))
    rows, x = [[]], 4
    for category in classes:
        w = line + cv2.getTextSize(category.name, _FONT, scale, thickness)[0][0] + 12
        if x + w > width and rows[-1]:
            rows.append([])
            x = 4
        rows[-1].append((x, category))
        x += w
    return rows


def legend_strip(classes: Sequence[Category], width: int, scale: float,
                 room: Sequence[Category] | None = None) -> np.ndarray:
    """``(h, width, 3) uint8``: the classes as swatches (class colour) and names, left to right,
    wrapped into as many rows as the width needs. Its height depends on the classes and the
    width only, or with ``room`` (e.g. all the model's classes) on ``room`` and the width: a
    strip that lists each frame's own classes keeps every overlay frame the same size that way."""
    line = int(24 * scale) + 6
    thickness = max(1, int(round(scale * 2)))
    rows = _legend_rows(classes, width, scale)
    n_rows = max(len(rows), len(_legend_rows(room, width, scale))) if room is not None else len(rows)
    height = line * n_rows + 4
    strip = np.full((height + height % 2, width, 3), 32, np.uint8)  # even: video codecs want even sizes
    for r, row in enumerate(rows):
        y = r * line + 4
        for x, category in row:
            cv2.rectangle(strip, (x, y), (x + line - 6, y + line - 6), category.color, -1)
            cv2.putText(strip, category.name, (x + line, y + line - 8), _FONT, scale, (255, 255, 255), thickness,
                        cv2.LINE_AA)
    return strip


def render_overlay(rgb: np.ndarray, ids: np.ndarray, segments: Sequence[LabelledSegment] = (), *,
                   timestamp_ns: int | None = None, legend: Sequence[Category] | None = None,
                   categories: Sequence[Category] = CITYSCAPES_CATEGORIES, alpha: float = 0.5,
                   legend_room: Sequence[Category] | None = None) -> np.ndarray:
    """``rgb (H, W, 3) uint8`` blended with the colours of ``ids (H, W) int`` (VOID left as is),
    segment boundaries in black; each thing of ``segments`` boxed and labelled ``<track id>
    <class>`` inside its box (things too small to hold the label keep the box only), the frame's
    time at the top left. With ``legend`` (the classes to list: the frame's own, or a video's), a
    :func:`legend_strip` is added below the frame, so the legend hides none of the scene; with
    ``legend_room`` the strip is as tall as those classes would need (every frame the same size).
    Stuff takes its colour and every segment its name from ``categories`` (the model's classes,
    default Cityscapes'). Returns ``(H, W, 3) uint8``, or ``(H + strip, W, 3)`` with a legend."""
    stuff, names = _stuff_of(categories), {c.id: c.name for c in categories}
    paint = ids != 0
    if alpha == 0.5:  # the default, in integers: the float arithmetic's result exactly, ~5x faster
        blended = ((rgb.astype(np.uint16) + colourise(ids, categories)) >> 1).astype(np.uint8)
        out = np.where(paint[..., None], blended, rgb)
    else:
        painted = colourise(ids, categories).astype(np.float32)
        out = rgb.astype(np.float32)
        out[paint] = (1 - alpha) * out[paint] + alpha * painted[paint]
        out = out.astype(np.uint8)
    edges = np.zeros(ids.shape, bool)
    edges[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edges[1:, :] |= ids[1:, :] != ids[:-1, :]
    out[edges] = 0
    out = np.ascontiguousarray(out)
    scale = _scale(ids.shape[0])
    for seg in segments:
        if not seg.isthing:
            continue
        name = names.get(seg.category_id, str(seg.category_id))
        label = f"{name} (crowd)" if seg.iscrowd else f"{seg.track_id} {name}"
        x, y, w, h = (int(v) for v in seg.bbox)
        colour = track_colour(seg.track_id, stuff)
        cv2.rectangle(out, (x, y), (x + max(w - 1, 0), y + max(h - 1, 0)), colour, 1)
        (tw, th), base = cv2.getTextSize(label, _FONT, scale, max(1, int(round(scale * 2))))
        # inside its own box, and only where it hides at most a quarter of it: a label must not
        # cover the object it names, nor its neighbours (small things keep their box only)
        if tw + 4 <= w and th + base + 4 <= h and 4 * (tw + 2) * (th + base + 2) <= w * h:
            _text(out, label, (x + 1, y + 1), scale, (255, 255, 255), colour)
    if timestamp_ns is not None:
        _text(out, format_timestamp(timestamp_ns), (4, 4), scale, (255, 255, 255))
    if legend or legend_room:  # with room: also a frame without a class has its (empty) strip
        out = np.vstack([out, legend_strip(legend or (), out.shape[1], scale, legend_room)])
    return out


OVERLAY_JPEG_QUALITY = 90
"""JPEG quality of an overlay video's frames (Motion-JPEG: each frame one JPEG)."""


def render_frame_overlay(rgb: np.ndarray, ids: np.ndarray, segments: Sequence[LabelledSegment], *,
                         timestamp_ns: int | None = None,
                         categories: Sequence[Category] = CITYSCAPES_CATEGORIES) -> np.ndarray:
    """One frame of an overlay video, rendered on its own (where the frame is, without the rest of
    the video): :func:`render_overlay` with the legend of the frame's own classes, in a strip as
    tall as all of ``categories`` would need, so every frame of a video has one size whichever
    classes it shows. ``(H + strip, W, 3) uint8``."""
    return render_overlay(rgb, ids, segments, timestamp_ns=timestamp_ns, legend=legend_classes(segments, categories),
                          categories=categories, legend_room=categories)


def encode_jpeg(rgb: np.ndarray, quality: int = OVERLAY_JPEG_QUALITY) -> bytes:
    """``(H, W, 3) uint8`` RGB → JPEG bytes."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return data.tobytes()
