"""Evaluation outputs people read: ``metrics.json``, ``per_class.parquet``,
``per_video.parquet`` and ``report.html`` (tables laid out like the VPS paper's Table 3 —
VPQ / VPQ-Th / VPQ-St per k — plus a VPQ-vs-k chart and per-class bars, inline SVG from
:mod:`operators.metrics.charts`).

Every file goes through :func:`operators.fs.write_bytes` (atomic); ``metrics.json`` is
written last, so its presence means the report is complete.
"""
from __future__ import annotations

import html
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from operators import fs
from operators.metrics import charts
from operators.metrics.stq import StqStats
from operators.metrics.video import EvaluationSettings, VideoEvaluation
from operators.metrics.vpq import VpqResult, VpqStats


@dataclass
class VideoFailure:
    video_id: str
    error: str


def per_video_schema(ks: Sequence[int]) -> pa.Schema:
    return pa.schema([("video_id", pa.string()), ("frames", pa.int64()), ("missing_frames", pa.int64()),
                      ("status", pa.string()), ("error", pa.string()), ("vpq", pa.float64()),
                      ("vpq_thing", pa.float64()), ("vpq_stuff", pa.float64())]
                     + [(f"vpq_k{k}", pa.float64()) for k in ks]
                     + [("stq", pa.float64()), ("aq", pa.float64()), ("stq_sq", pa.float64())])


def per_video_row(video: VideoEvaluation, settings: EvaluationSettings) -> dict:
    """The ``per_video.parquet`` row of one video: computed where the video was evaluated,
    so that the process collecting the rows only files them."""
    row = {"video_id": video.video_id, "frames": video.frames, "missing_frames": video.missing_frames,
           "status": "failed" if video.error else "ok", "error": video.error}
    result = None if video.error else video.vpq.result(settings.categories, settings.ks)
    row.update({"vpq": result.vpq if result else None, "vpq_thing": result.vpq_thing if result else None,
                "vpq_stuff": result.vpq_stuff if result else None})
    for k in settings.ks:
        row[f"vpq_k{k}"] = result.per_k[k]["all"]["pq"] if result else None
    stq = video.stq.result() if video.stq is not None else None
    row.update({"stq": float(stq["STQ"]) if stq else None, "aq": float(stq["AQ"]) if stq else None,
                "stq_sq": float(stq["IoU"]) if stq else None})
    return _clean(row)


class VideoLog:
    """The per-video outcomes of an evaluation as they arrive, in any order: counts, the
    failures (one line each), and the ``per_video.parquet`` rows, which wait in a local
    Parquet spill file in batches — the collecting process holds O(1) per video."""

    BATCH = 4096

    def __init__(self, ks: Sequence[int]):
        self.schema = per_video_schema(ks)
        self.videos = self.frames = self.missing_frames = 0
        self.failures: list[VideoFailure] = []
        self._rows: list[dict] = []
        self._dir: str | None = None
        self._writer: pq.ParquetWriter | None = None
        self._table: pa.Table | None = None

    @classmethod
    def of(cls, videos: Sequence[VideoEvaluation], settings: EvaluationSettings) -> "VideoLog":
        log = cls(settings.ks)
        for video in videos:
            log.add(per_video_row(video, settings))
        return log

    def add(self, row: dict) -> None:
        self.videos += 1
        if row["error"]:
            self.failures.append(VideoFailure(row["video_id"], row["error"]))
        else:
            self.frames += row["frames"]
            self.missing_frames += row["missing_frames"]
        self._rows.append(row)
        if len(self._rows) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._dir = tempfile.mkdtemp(prefix="tubeflow-per-video-")
            self._writer = pq.ParquetWriter(os.path.join(self._dir, "rows.parquet"), self.schema)
        self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
        self._rows = []

    def table(self) -> pa.Table:
        """Every row, sorted by video id (an Arrow table: ~100 bytes a video); call it after
        the last :meth:`add`."""
        if self._table is None:
            self._flush()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
                self._table = pq.read_table(os.path.join(self._dir, "rows.parquet"))
                shutil.rmtree(self._dir, ignore_errors=True)
            else:
                self._table = self.schema.empty_table()
            self._table = self._table.sort_by([("video_id", "ascending")])
        return self._table


@dataclass
class EvaluationReport:
    """The dataset result and the per-video outcomes it was summed from."""

    settings: EvaluationSettings
    vpq: VpqResult
    stq: dict
    log: VideoLog
    warnings: list[str] = field(default_factory=list)
    """What may make the figures mean something else than asked (e.g. the annotation spacing)."""

    @property
    def failures(self) -> list[VideoFailure]:
        return sorted(self.log.failures, key=lambda f: f.video_id)

    @property
    def video_count(self) -> int:
        return self.log.videos


def build_report(settings: EvaluationSettings, vpq_totals: VpqStats, stq_totals: StqStats | None,
                 videos: Sequence[VideoEvaluation] | VideoLog, warnings: Sequence[str] = ()) -> EvaluationReport:
    stq = stq_totals.result() if stq_totals is not None and stq_totals.table.num_rows else \
        {"STQ": float("nan"), "AQ": float("nan"), "IoU": float("nan")}
    log = videos if isinstance(videos, VideoLog) else VideoLog.of(videos, settings)
    return EvaluationReport(settings, vpq_totals.result(settings.categories, settings.ks), stq, log, list(warnings))


def _clean(value):
    """JSON has no NaN: undefined values are written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def metrics_document(report: EvaluationReport) -> dict:
    vpq, stq = report.vpq, report.stq
    per_k = {}
    for k, groups in vpq.per_k.items():
        per_k[str(k)] = {"vpq": groups["all"]["pq"], "vpq_thing": groups["things"]["pq"],
                         "vpq_stuff": groups["stuff"]["pq"], "sq": groups["all"]["sq"], "rq": groups["all"]["rq"],
                         "sq_thing": groups["things"]["sq"], "rq_thing": groups["things"]["rq"],
                         "sq_stuff": groups["stuff"]["sq"], "rq_stuff": groups["stuff"]["rq"],
                         "categories": groups["all"]["n"]}
    s = report.settings
    return _clean({
        "vpq": vpq.vpq, "vpq_thing": vpq.vpq_thing, "vpq_stuff": vpq.vpq_stuff,
        "pq": vpq.per_k[0]["all"]["pq"] if 0 in vpq.per_k else None,
        "per_k": per_k, "stq": float(stq["STQ"]), "aq": float(stq["AQ"]), "sq": float(stq["IoU"]),
        "videos": report.log.videos, "videos_failed": len(report.failures),
        "frames": report.log.frames, "frames_missing_prediction": report.log.missing_frames,
        "failures": [{"video_id": v.video_id, "error": v.error} for v in report.failures],
        "warnings": list(report.warnings),
        "settings": {"ks": list(s.ks), "stride": s.stride, "allow_missing": s.allow_missing, "gt_area": s.gt_area,
                     "stq_ignore_label": s.ignore_label},
        "scale": "fractions in [0, 1]; the papers print 100x",
    })


def per_class_table(report: EvaluationReport) -> pa.Table:
    return pa.Table.from_pylist([asdict(c) for c in report.vpq.per_class])


def per_video_table(report: EvaluationReport) -> pa.Table:
    return report.log.table()


def vpq_vs_k_svg(report: EvaluationReport) -> str:
    ks = list(report.settings.ks)
    series = {label: [100 * report.vpq.per_k[k][group]["pq"] for k in ks]
              for group, label in (("all", "VPQ"), ("things", "VPQ-Th"), ("stuff", "VPQ-St"))}
    return charts.line_chart(ks, series, "temporal window k (frames)", "VPQ^k (%)", "VPQ versus k")


def per_class_svg(report: EvaluationReport) -> str:
    categories = list(report.settings.categories.values())
    by_key = {(c.k, c.category_id): c for c in report.vpq.per_class}
    series = {f"k={k}": [100 * by_key[(k, c.id)].pq for c in categories] for k in report.settings.ks}
    return charts.grouped_bars([c.name for c in categories], series, "VPQ^k (%)", "VPQ per class")


def _pct(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def report_html(report: EvaluationReport, title: str = "tubeflow evaluation") -> str:
    ks = list(report.settings.ks)
    vpq = report.vpq
    head = "".join(f"<th>k = {k}</th>" for k in ks)
    paper = [f"<tr><th>{label}</th>" + "".join(f"<td>{_pct(vpq.per_k[k][g]['pq'])}</td>" for k in ks)
             + f"<td><b>{_pct(total)}</b></td></tr>"
             for label, g, total in (("VPQ", "all", vpq.vpq), ("VPQ-Th", "things", vpq.vpq_thing),
                                     ("VPQ-St", "stuff", vpq.vpq_stuff))]
    sq_rq = [f"<tr><th>{label}</th>" + "".join(f"<td>{_pct(vpq.per_k[k]['all'][key])}</td>" for k in ks) + "<td></td></tr>"
             for label, key in (("SQ", "sq"), ("RQ", "rq"))]
    class_rows = []
    by_key = {(c.k, c.category_id): c for c in vpq.per_class}
    for category in report.settings.categories.values():
        cells = "".join(f"<td>{_pct(by_key[(k, category.id)].pq)}</td>" for k in ks)
        c0 = by_key[(ks[0], category.id)]
        class_rows.append(f"<tr><td>{category.id}</td><td>{html.escape(category.name)}</td>"
                          f"<td>{'thing' if category.isthing else 'stuff'}</td>{cells}"
                          f"<td>{c0.tp}</td><td>{c0.fp}</td><td>{c0.fn}</td></tr>")
    failures = "".join(f"<li><code>{html.escape(v.video_id)}</code>: {html.escape(v.error or '')}</li>"
                       for v in report.failures) or "<li>none</li>"
    stq = report.stq
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}} caption{{font-weight:bold;text-align:left}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p>{report.log.videos} videos ({len(report.failures)} failed), annotation stride λ = {report.settings.stride},
GT tube areas: {report.settings.gt_area}. Values in %.</p>
{''.join(f'<p><strong>Warning:</strong> {html.escape(w)}</p>' for w in report.warnings)}
<table><caption>Video panoptic quality (Kim et al., CVPR 2020, Table 3 layout)</caption>
<tr><th></th>{head}<th>VPQ</th></tr>{''.join(paper)}{''.join(sq_rq)}</table>
<table><caption>Segmentation and tracking quality (Weber et al., 2021)</caption>
<tr><th>STQ</th><th>AQ</th><th>SQ</th></tr>
<tr><td>{_pct(stq['STQ'])}</td><td>{_pct(stq['AQ'])}</td><td>{_pct(stq['IoU'])}</td></tr></table>
<p>{vpq_vs_k_svg(report)}</p>
<p>{per_class_svg(report)}</p>
<table><caption>Per class VPQ^k (TP/FP/FN at k = {ks[0]})</caption>
<tr><th>id</th><th>class</th><th>kind</th>{head}<th>TP</th><th>FP</th><th>FN</th></tr>{''.join(class_rows)}</table>
<h2>Failed videos</h2><ul>{failures}</ul>
</body></html>
"""


def write_report(out: str, report: EvaluationReport) -> dict:
    """Write the four outputs under ``out``; returns the metrics document."""
    document = metrics_document(report)
    for name, table in (("per_class.parquet", per_class_table(report)), ("per_video.parquet", per_video_table(report))):
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        fs.write_bytes(fs.join(out, name), buffer.getvalue())
    fs.write_bytes(fs.join(out, "report.html"), report_html(report).encode())
    fs.write_bytes(fs.join(out, "metrics.json"), json.dumps(document, indent=2).encode())
    return document
