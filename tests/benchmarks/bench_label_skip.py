"""The driver's cost over a large committed output: a ``label`` rerun that skips every video,
and a ``nightly`` that finds a few new videos among many committed ones.

Run::

    .venv/bin/python tests/benchmarks/bench_label_skip.py [--counts 1000,10000 --new 10]

For each count N it builds an output root holding N committed videos (plus the N input
videos), then times, each in a child process of its own (wall time and the child's peak
resident memory, ``ru_maxrss``):

* ``rerun``: ``tubeflow label`` over the same N inputs — every video unchanged, so skipped;
* ``nightly``: ``tubeflow nightly`` over the N inputs plus ``--new`` new ones — it labels
  the new videos and rebuilds ``pred.json`` over all N + new committed videos.

The first count is the baseline: the output prints seconds and KiB of peak memory per video at
each count and their ratio to the baseline's (flat per-video cost: ratio ~1).

Building N committed videos by labelling them would take hours here, so one tiny video
(2 frames, 64×128, the built-in model, PNGs on) is labelled for real and its committed output
is copied under N video ids: each copy gets its own input file, segments partition, PNGs,
annotations (image ids rewritten) and a commit marker with the copy's input fingerprint and
the real run's config hash — what ``label`` would have committed for that video.
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
TEMPLATE = "tpl"


def make_template(work: Path) -> tuple[Path, Path]:
    """One tiny input video and its real labelled output → (input dir, output dir)."""
    from operators.synth import SynthConfig, write_corpus
    from pipelines.label import LabelConfig, label

    corpus = work / "corpus"
    write_corpus(str(corpus), SynthConfig(videos=1, frames=2, height=64, width=128, seed=0))
    inputs = work / "template_in"
    inputs.mkdir()
    shutil.copy(next((corpus / "videos").glob("*.mp4")), inputs / f"{TEMPLATE}.mp4")
    out = work / "template_out"
    run = label(str(inputs), str(out), LabelConfig(image_id_format=IMAGE_ID, write_png=True), progress=False,
                log=lambda *_: None)
    assert not run.failed, run.failed
    return inputs, out


def clone_output(template_in: Path, template_out: Path, inputs: Path, out: Path, video_ids: list[str]) -> None:
    """Copy the template's committed output under every id of ``video_ids`` (see module doc)."""
    from operators.ids import video_key
    from pipelines.commit import COMMITS_DIR, CommitMarker
    from pipelines.migrate import LAYOUT_FILE
    from pipelines.plan import fingerprint

    marker = CommitMarker.from_json((template_out / COMMITS_DIR / f"{video_key(TEMPLATE)}.json").read_bytes())
    video_bytes = (template_in / f"{TEMPLATE}.mp4").read_bytes()
    inputs.mkdir(parents=True, exist_ok=True)
    (out / COMMITS_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copy(template_out / LAYOUT_FILE, out / LAYOUT_FILE)
    old_key = video_key(TEMPLATE)
    for video_id in video_ids:
        (inputs / f"{video_id}.mp4").write_bytes(video_bytes)
        key = video_key(video_id)
        files = []
        for relative in marker.files:
            source = template_out / relative
            target_rel = relative.replace(f"video_key={old_key}", f"video_key={key}") \
                .replace(f"/{old_key}.", f"/{key}.").replace(f"/{old_key}/", f"/{key}/") \
                .replace(f"/{TEMPLATE}_", f"/{video_id}_")
            target = out / target_rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if relative.endswith(".json"):
                text = source.read_text().replace(f'"{TEMPLATE}_', f'"{video_id}_') \
                    .replace(f'"video_id": "{TEMPLATE}"', f'"video_id": "{video_id}"')
                target.write_text(text)
            else:
                shutil.copyfile(source, target)
            files.append(target_rel)
        copy = CommitMarker(video_id, fingerprint(str(inputs / f"{video_id}.mp4")).digest, marker.config_hash,
                            marker.model_checksums, marker.counts, files, marker.run_id)
        (out / COMMITS_DIR / f"{key}.json").write_bytes(copy.to_json())


CHILD = """import resource, sys
from jobs.cli import main
try:
    code = main(sys.argv[1:])
finally:
    print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def timed_child(argv: list[str]) -> tuple[float, int, int]:
    """Run a ``tubeflow`` command in a child process → (wall seconds, the driver's own peak RSS in
    KiB — Ray's processes not counted —, exit code)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    peak = next((int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("peak_kib ")), 0)
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
    return seconds, peak, done.returncode


def measure(counts: list[int], new: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_label_skip_") as tmp:
        work = Path(tmp)
        template_in, template_out = make_template(work)
        for count in counts:
            inputs, out = work / f"in_{count}", work / f"out_{count}"
            started = time.perf_counter()
            clone_output(template_in, template_out, inputs, out, [f"v{i:06d}" for i in range(count)])
            built = time.perf_counter() - started
            cli: list[str] = []
            common = ["--output", str(out), "--image-id-format", IMAGE_ID, "--png", "--no-progress"]
            rerun = timed_child(cli + ["label", "--input", str(inputs)] + common)
            for i in range(new):
                shutil.copy(template_in / f"{TEMPLATE}.mp4", inputs / f"new{i:03d}.mp4")
            night = timed_child(cli + ["nightly", "--input", str(inputs)] + common)
            committed = len(os.listdir(out / "_commits"))
            frames = len(json.loads((out / "pred.json").read_text())["annotations"])
            rows.append({"videos": count, "built_s": built, "rerun_s": rerun[0], "rerun_kib": rerun[1],
                         "rerun_rc": rerun[2], "nightly_s": night[0], "nightly_kib": night[1], "nightly_rc": night[2],
                         "committed": committed, "pred_frames": frames})
            shutil.rmtree(out)
            shutil.rmtree(inputs)
    return rows


def report(rows: list[dict], new: int) -> None:
    base = rows[0]
    print(f"{'videos':>8} {'rerun s':>8} {'ms/video':>9} {'ratio':>6} {'peak MiB':>9} | {'nightly s':>9} "
          f"{'ms/video':>9} {'ratio':>6} {'peak MiB':>9} | committed  pred.json frames  exit codes")
    for row in rows:
        per = {k: row[f"{k}_s"] / row["videos"] * 1e3 for k in ("rerun", "nightly")}
        ratio = {k: per[k] / (base[f"{k}_s"] / base["videos"] * 1e3) for k in per}
        print(f"{row['videos']:>8} {row['rerun_s']:>8.1f} {per['rerun']:>9.2f} {ratio['rerun']:>6.2f} "
              f"{row['rerun_kib'] / 1024:>9.0f} | {row['nightly_s']:>9.1f} {per['nightly']:>9.2f} "
              f"{ratio['nightly']:>6.2f} {row['nightly_kib'] / 1024:>9.0f} | {row['committed']:>9} "
              f"{row['pred_frames']:>16}  {row['rerun_rc']}, {row['nightly_rc']}")
    if len(rows) > 1:
        last = rows[-1]
        for kind in ("rerun", "nightly"):
            grown = (last[f"{kind}_kib"] - base[f"{kind}_kib"]) / (last["videos"] - base["videos"])
            print(f"{kind}: peak memory grows {grown:.2f} KiB per added committed video "
                  f"({base['videos']} → {last['videos']})")
    print(f"(nightly labels {new} new videos; peaks are the driver process's ru_maxrss, Ray's processes excluded)")


@pytest.mark.benchmark
def test_label_skip_path_small():
    rows = measure([20, 60], new=2)
    report(rows, 2)
    assert all(r["rerun_rc"] == 0 and r["nightly_rc"] == 0 for r in rows)
    assert [r["committed"] for r in rows] == [22, 62] and [r["pred_frames"] for r in rows] == [44, 124]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--new", type=int, default=10)
    args = parser.parse_args()
    report(measure([int(c) for c in args.counts.split(",")], args.new), args.new)


if __name__ == "__main__":
    main()
