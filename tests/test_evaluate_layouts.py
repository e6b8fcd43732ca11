"""`tubeflow evaluate` gives the same report whatever runs it (this process, a process pool,
Ray) and whatever layout GT and predictions come in (Cityscapes-VPS JSON + PNGs, segments
tables, converted with `tubeflow convert`)."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from operators.formats import convert
from test_evaluate_pipeline import corpus, expected_metrics, write_corpus


def _outputs(out):
    return json.loads((out / "metrics.json").read_text()), pq.read_table(out / "per_video.parquet"), \
        pq.read_table(out / "per_class.parquet")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """One corpus in both layouts: 7 videos, one frame without prediction (scored with
    --allow-missing), annotations 5 frames apart."""
    root = tmp_path_factory.mktemp("layouts")
    videos = corpus(31, n_videos=7, frames=4)
    paths = write_corpus(root, videos, skip={("0003", 2)})
    convert.vps_to_table(paths["gt_json"], paths["gt_dir"], str(root / "gt_table"))
    convert.vps_to_table(paths["gt_json"], paths["gt_dir"], str(root / "pred_table"), paths["pred_dir"])
    return root, videos, paths


def test_every_executor_gives_the_same_report(layouts, tmp_path, ray_local):
    """In this process, in a pool of 2 and 3 processes, and on Ray: the same shards, the same
    per-video function, totals summed in shard order — the same bytes of metrics, per video
    and per class, and equal to the reference."""
    from pipelines.evaluate import evaluate

    _, videos, paths = layouts
    runs = {"inprocess": dict(executor="local", workers=1), "pool2": dict(executor="local", workers=2),
            "pool3": dict(executor="local", workers=3, videos_per_task=2),
            "ray": dict(executor="ray", videos_per_task=2), "auto": dict(executor="auto")}
    outputs = {}
    for name, options in runs.items():
        options.setdefault("videos_per_task", 1)
        report = evaluate(**paths, out=str(tmp_path / name), allow_missing=True, progress=False, **options)
        assert report.video_count == 7 and not report.failures
        outputs[name] = _outputs(tmp_path / name)
    metrics, per_video, per_class = outputs["inprocess"]
    for name in ("pool2", "ray", "auto"):  # one video per task: identical to the last bit
        assert outputs[name][0] == metrics
        assert outputs[name][1].equals(per_video) and outputs[name][2].equals(per_class)
    for name in ("pool3", "ray"):  # other shards: sums added in another grouping
        assert outputs[name][0]["vpq"] == pytest.approx(metrics["vpq"], abs=1e-12)
    assert metrics["frames_missing_prediction"] == 1


def test_tables_give_the_same_report_as_the_json_layout(layouts, tmp_path):
    """GT and predictions as segments tables (and GT JSON with a prediction table): the same
    metrics as the Cityscapes-VPS layout, which equal the reference."""
    root, videos, paths = layouts
    base = ["evaluate", "--allow-missing", "--no-progress", "--executor", "local", "--workers", "2"]
    assert main(base + ["--gt-json", paths["gt_json"], "--gt-dir", paths["gt_dir"], "--pred-dir",
                        paths["pred_dir"], "--out", str(tmp_path / "json")]) == 0
    assert main(base + ["--gt-table", str(root / "gt_table"), "--pred-table", str(root / "pred_table"),
                        "--out", str(tmp_path / "tables")]) == 0
    assert main(base + ["--gt-json", paths["gt_json"], "--gt-dir", paths["gt_dir"], "--pred-table",
                        str(root / "pred_table"), "--out", str(tmp_path / "mixed")]) == 0
    metrics, per_video, per_class = _outputs(tmp_path / "json")
    for name in ("tables", "mixed"):
        assert _outputs(tmp_path / name)[0] == metrics
        assert _outputs(tmp_path / name)[1].equals(per_video) and _outputs(tmp_path / name)[2].equals(per_class)
    videos = dict(videos)
    from operators.metrics.reference import ReferenceFrame
    import numpy as np

    f = videos["0003"][2]
    videos["0003"] = list(videos["0003"])
    videos["0003"][2] = ReferenceFrame(f.gt_ids, f.gt_segments, np.zeros_like(f.pred_ids), [])
    ref, stq = expected_metrics(videos)
    assert metrics["vpq"] == pytest.approx(ref["all"], abs=1e-9)
    assert metrics["stq"] == pytest.approx(stq["STQ"], abs=1e-12)


def test_table_inputs_report_bad_videos_by_partition(layouts, tmp_path, capsys):
    """A missing prediction in a table (without --allow-missing) and a damaged partition file
    fail their videos with errors naming the partition; the others are scored."""
    import shutil

    root, _, _ = layouts
    pred_table = tmp_path / "pred_table"
    shutil.copytree(root / "pred_table", pred_table)
    (part,) = (pred_table / "video_key=0005").glob("*.parquet")
    part.write_bytes(b"not parquet")
    code = main(["evaluate", "--gt-table", str(root / "gt_table"), "--pred-table", str(pred_table),
                 "--out", str(tmp_path / "out"), "--no-progress", "--executor", "local", "--workers", "1"])
    assert code == 1
    errors = {f["video_id"]: f["error"] for f in json.loads((tmp_path / "out" / "metrics.json").read_text())["failures"]}
    assert set(errors) == {"0003", "0005"}
    assert errors["0003"].startswith("video 0003 frame 10: no prediction") and str(pred_table) in errors["0003"]
    assert "cannot read the segments table file" in errors["0005"] and str(part) in errors["0005"]


@pytest.mark.parametrize("args, message", [
    (["--gt-table", "T", "--pred-dir", "P"], "a GT table needs predictions as a table too"),
    (["--gt-json", "G", "--pred-dir", "P"], "--gt-json with --gt-dir"),
    (["--gt-table", "T"], "--pred-dir or as --pred-table"),
    (["--gt-table", "T", "--pred-table", "P", "--executor", "local", "--address", "auto"], "leave out --executor local"),
])
def test_inconsistent_inputs_are_one_error(tmp_path, args, message, capsys):
    assert main(["evaluate", *args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_both_layouts_on_object_storage(layouts, tmp_path, s3_bucket):
    """The streamed split reads a GT JSON and pred.json on S3 (through the local cache) and
    the workers read table partitions there (moto S3)."""
    import fsspec

    from pipelines.evaluate import evaluate

    root, _, paths = layouts
    fsspec.filesystem("s3").put(str(root) + "/", f"{s3_bucket}/data/", recursive=True)
    json_report = evaluate(f"{s3_bucket}/data/gt.json", f"{s3_bucket}/data/gt", f"{s3_bucket}/data/pred",
                           f"{s3_bucket}/out_json", allow_missing=True, executor="local", workers=1, progress=False)
    table_report = evaluate(gt_table=f"{s3_bucket}/data/gt_table", pred_table=f"{s3_bucket}/data/pred_table",
                            out=f"{s3_bucket}/out_table", allow_missing=True, executor="local", workers=1,
                            progress=False)
    assert json_report.video_count == table_report.video_count == 7 and not json_report.failures
    assert table_report.vpq.vpq == json_report.vpq.vpq and table_report.stq["STQ"] == json_report.stq["STQ"]
    metrics = json.loads(fsspec.open(f"{s3_bucket}/out_table/metrics.json").open().read())
    local = evaluate(**paths, out=str(tmp_path / "local"), allow_missing=True, executor="local", workers=1,
                     progress=False)
    assert metrics["vpq"] == local.vpq.vpq


def test_a_table_given_as_gt_json_is_named_at_the_door(layouts, tmp_path, capsys):
    """The one layout check of every command that takes a GT (``label --gt`` tells the two apart
    by it): ``evaluate --gt-json`` given a table says to pass it as ``--gt-table``."""
    root = layouts[0]
    table = str(root / "gt_table")
    code = main(["evaluate", "--gt-json", table, "--gt-dir", str(tmp_path), "--pred-table", str(root / "pred_table"),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and table in err and "give it as --gt-table" in err, err
