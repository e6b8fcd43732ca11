"""The driver's memory of ``tubeflow label --gt`` as the corpus grows, the GT as a JSON and as a
segments table.

Run::

    .venv/bin/python tests/benchmarks/bench_label_gt.py [--gt-counts 1000,10000 --counts 100,400]

or with ``make bench`` (smaller sizes). One tiny synthetic video (64×128, 2 frames, both
annotated) and its GT are cloned under N video ids: a GT JSON with every clone's images and
annotations (the PNGs shared), the same GT as a segments table (``tubeflow convert``), and N input
files. Each measurement runs in a child process of its own; the figure is its peak RSS
(``VmHWM``) and the growth per added video from the first N to the last (target: ≤ 10 KiB per
video in both layouts).

* **The GT in the driver** (``--gt-counts``): what ``label`` does with the GT before the graph
  runs — the door (:meth:`RunGroundTruth.open`: a JSON split as a stream, a table listed) and a
  reference per video to label (:meth:`RunGroundTruth.refs`: a JSON's per-video documents
  written) — against the baseline in the same run, what ``label`` did before: the whole GT JSON
  parsed (``read_ground_truth``) and every video's ``GtFrame`` records and image names held.
* **End to end** (``--counts``): ``tubeflow label`` (the built-in model without test-time
  augmentation or refinement, the cheapest real run; on Ray, the engine of large corpora) three
  times per N: without GT, with ``--gt`` the JSON, with ``--gt`` the table. Ray's processes are
  not counted. Its growth per video is mostly the label driver's own (the run without GT shows
  it), and run-to-run noise of a few MiB is a large share of it at these sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

IMAGE_ID = "{video_id}_{frame_index:04d}"
# the label command in a child, as bench_evaluate_scale runs evaluate: its peak is VmHWM
# (ru_maxrss survives exec: a child of a large process would report the parent's peak)
from bench_evaluate_scale import _HIGH_WATER, _PEAK as _LABEL  # noqa: E402

# what the driver held before: the whole GT parsed, every video's GtFrames and image names
_BEFORE = f"""
import sys
from operators.formats.vps_layout import read_ground_truth
from pipelines.label.columns import GtFrame
gt = read_ground_truth(sys.argv[1], sys.argv[2])
annotated, named = {{}}, {{}}
for video_id, images in gt.videos().items():
    named[video_id] = {{image.frame_index: str(image.id) for image in images}}
    annotated[video_id] = [GtFrame(image, gt.png_uri(image), gt.annotations[image.key].segments)
                           for image in images if image.key in gt.annotations]
{_HIGH_WATER}
"""


# what label's driver does with the GT now, before the graph runs
_DOOR = f"""
import sys
from pipelines.label.ground_truth import RunGroundTruth
n = int(sys.argv[3])
with RunGroundTruth.open(sys.argv[1], sys.argv[2] or None, {{}}) as gt:
    refs = gt.refs([f"v{{v:06d}}" for v in range(n)], sys.argv[4])
    assert len(refs) == n, len(refs)
    gt.remove_documents()
{_HIGH_WATER}
"""


def make_corpus(work: Path, counts: list[int], frames: int, inputs: bool = True) -> dict:
    """The template video and its GT cloned under each count of ids: a GT JSON, a GT table and
    (``inputs``) an input directory per count (see module doc)."""
    from operators.formats import convert
    from operators.synth import SynthConfig, write_corpus

    template = work / "template"
    if not template.exists():
        write_corpus(str(template), SynthConfig(videos=1, frames=frames, height=64, width=128, seed=0,
                                                annotate_every=1))
    video = next((template / "videos").glob("*.mp4"))
    gt = json.loads((template / "gt" / "panoptic_gt.json").read_text())
    by_image = {a["image_id"]: a for a in gt["annotations"]}
    images = sorted(gt["images"], key=lambda im: im["frame_index"])
    out = {}
    for count in counts:
        folder = work / f"in_{count}"
        folder.mkdir(exist_ok=True)
        clone_images, clone_annotations = [], []
        for v in range(count):
            video_id = f"v{v:06d}"
            if inputs:
                shutil.copyfile(video, folder / f"{video_id}.mp4")
            for image in images:
                image_id = IMAGE_ID.format(video_id=video_id, frame_index=image["frame_index"])
                clone_images.append({**image, "id": image_id, "video_id": video_id})
                if image["id"] in by_image:  # the PNG is the template's, shared by every clone
                    clone_annotations.append({**by_image[image["id"]], "image_id": image_id})
        gt_json = work / f"gt_{count}.json"
        gt_json.write_text(json.dumps({"images": clone_images, "annotations": clone_annotations,
                                       "categories": gt["categories"]}))
        table = work / f"gt_table_{count}"
        convert.vps_to_table(str(gt_json), str(template / "gt" / "panoptic"), str(table))
        out[count] = {"inputs": folder, "gt_json": gt_json, "table": table,
                      "gt_bytes": gt_json.stat().st_size}
    out["gt_dir"] = template / "gt" / "panoptic"
    return out


def _child(script: str, *args: str) -> tuple[float, int, str]:
    """(wall seconds, the child's peak RSS in KiB, its stderr tail)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    peak = [line for line in done.stdout.splitlines() if line.startswith("PEAK_KB")]
    return seconds, int(peak[-1].split()[1]), done.stderr[-2000:]


def measure_gt(counts: list[int], frames: int) -> dict:
    """The GT in the driver: the door and the references now, the whole GT before (module doc)."""
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench_label_gt_") as tmp:
        work = Path(tmp)
        corpus = make_corpus(work, counts, frames, inputs=False)
        for count in counts:
            c = corpus[count]
            for layout, (uri, png_dir) in {"json": (c["gt_json"], corpus["gt_dir"]), "table": (c["table"], "")}.items():
                seconds, peak, _ = _child(_DOOR, str(uri), str(png_dir), str(count), str(work / "staging"))
                figures[(layout, count)] = {"seconds": seconds, "peak_kib": peak}
            seconds, peak, _ = _child(_BEFORE, str(c["gt_json"]), str(corpus["gt_dir"]))
            figures[("before", count)] = {"seconds": seconds, "peak_kib": peak}
            figures[("gt_bytes", count)] = c["gt_bytes"]
            shutil.rmtree(c["table"])
    return figures


def report_gt(figures: dict, counts: list[int]) -> dict[str, float]:
    first, last = counts[0], counts[-1]
    print(f"\nthe GT in label's driver (the door + a reference per video), GT JSON "
          f"{figures[('gt_bytes', last)] / last / 1024:.1f} KiB per video, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; peak RSS (VmHWM) of a process doing only that")
    growth = {}
    for layout, name in (("json", "now, --gt JSON"), ("table", "now, --gt table"),
                         ("before", "before: whole GT held")):
        peaks = [figures[(layout, n)]["peak_kib"] for n in counts]
        growth[layout] = (peaks[-1] - peaks[0]) / (last - first)
        print(f"  {name:24s} peak " + " -> ".join(f"{p / 1024:.1f} MiB" for p in peaks)
              + f" ({first} -> {last} videos): {growth[layout]:+.2f} KiB per added video   "
              + "  ".join(f"{figures[(layout, n)]['seconds']:.1f} s" for n in counts))
    for layout in ("json", "table"):
        ratio = (f"{growth['before'] / growth[layout]:.1f}x less per video than before" if growth[layout] > 0.05 else
                 f"no growth above 0.05 KiB per video (before: {growth['before']:.1f} KiB)")
        print(f"  --gt {layout}: {ratio}; target <= 10 KiB per video")
    return growth


def measure(counts: list[int], frames: int) -> dict:
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench_label_gt_") as tmp:
        work = Path(tmp)
        corpus = make_corpus(work, counts, frames)
        for count in counts:
            c = corpus[count]
            gts = {"none": [], "json": ["--gt", str(c["gt_json"]), "--gt-dir", str(corpus["gt_dir"])],
                   "table": ["--gt", str(c["table"])]}
            for layout, gt in gts.items():
                out = work / f"out_{layout}_{count}"
                seconds, peak, _ = _child(_LABEL, "label", "--input", str(c["inputs"]), "--output", str(out),
                                          "--image-id-format", IMAGE_ID, "--no-flip", "--no-shift", "--no-refine",
                                          "--executor", "ray", "--no-progress", *gt)
                manifest = json.loads((out / "run_manifest.json").read_text())
                assert manifest["totals"] == {"ok": count, "skipped": 0, "failed": 0}, manifest["totals"]
                vpq = json.loads((out / "metrics" / "metrics.json").read_text())["vpq"] if gt else None
                figures[(layout, count)] = {"seconds": seconds, "peak_kib": peak, "vpq": vpq}
                shutil.rmtree(out)
            figures[("before", count)] = {"peak_kib": _child(_BEFORE, str(c["gt_json"]), str(corpus["gt_dir"]))[1]}
            figures[("gt_bytes", count)] = c["gt_bytes"]
    return figures


def report(figures: dict, counts: list[int], frames: int) -> dict[str, float]:
    first, last = counts[0], counts[-1]
    print(f"\n`tubeflow label --gt`, {frames}-frame 64x128 videos (all annotated; GT JSON "
          f"{figures[('gt_bytes', last)] / last / 1024:.1f} KiB per video), built-in model without TTA/refine, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; driver peak RSS (VmHWM)")
    growth = {}
    for layout in ("none", "json", "table", "before"):
        peaks = [figures[(layout, n)]["peak_kib"] for n in counts]
        growth[layout] = (peaks[-1] - peaks[0]) / (last - first)
        seconds = "  ".join(f"{figures[(layout, n)]['seconds']:.0f} s" for n in counts) if layout != "before" else ""
        label = {"none": "label, no GT", "json": "label --gt JSON", "table": "label --gt table",
                 "before": "before: whole GT in the driver"}[layout]
        print(f"  {label:32s} peak " + " -> ".join(f"{p / 1024:.1f} MiB" for p in peaks)
              + f" ({first} -> {last} videos): {growth[layout]:+.2f} KiB per added video   {seconds}")
    for layout in ("json", "table"):
        print(f"  --gt {layout}: the GT's share {growth[layout] - growth['none']:+.2f} KiB per video "
              f"(before: {growth['before']:+.2f} KiB per video only to hold the GT); target <= 10 KiB per video")
    vpqs = {round(figures[(layout, n)]["vpq"], 9) for layout in ("json", "table") for n in counts}
    print(f"  VPQ of every run with GT: {sorted(vpqs)}")
    return growth


@pytest.mark.benchmark
def test_label_gt_driver_memory_per_video():
    report_gt(measure_gt([200, 2000], frames=2), [200, 2000])
    counts = [40, 120]
    figures = measure(counts, frames=2)
    report(figures, counts, 2)
    # both layouts score the same clones the same way
    assert len({round(figures[(layout, n)]["vpq"], 9) for layout in ("json", "table") for n in counts}) == 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gt-counts", default="1000,10000", help="sizes of the GT-in-the-driver measurement")
    parser.add_argument("--counts", default="100,400", help="sizes of the end-to-end runs (empty: none)")
    parser.add_argument("--frames", type=int, default=2)
    args = parser.parse_args()
    gt_counts = [int(c) for c in args.gt_counts.split(",") if c]
    if gt_counts:
        report_gt(measure_gt(gt_counts, args.frames), gt_counts)
    counts = [int(c) for c in args.counts.split(",") if c]
    if counts:
        report(measure(counts, args.frames), counts, args.frames)


if __name__ == "__main__":
    main()
