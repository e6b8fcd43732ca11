"""GPU pinning without a GPU: Ray started with two *fake* GPUs must place the segmentation
actors of the label graph one per GPU id, and the model host must then fall back to the CPU
cleanly because CUDA is not really there.

Ray with fake GPUs needs its own ``ray.init``, so that part runs in a subprocess and leaves
the session's Ray (``ray_local``) alone.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from operators.device import select_placement
from pipelines.label.graph import segment_stage_options, stage_plan
from pipelines.label.config import LabelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {root!r})
    import numpy as np
    import ray
    from operators.device import select_placement
    from operators.formats.vps_layout import PredictionWriter
    from operators.formats.panoptic import PanopticFrame, SegmentInfo
    from pipelines.label.graph import segment_stage_options, stage_plan
    from pipelines.label.config import LabelConfig
    from pipelines.label.columns import segments_of
    from pipelines.label.stages import SegmentChunks

    probe_dir, preds = sys.argv[1], sys.argv[2]
    ids = np.zeros((64, 64), np.int32); ids[:32] = 7
    with PredictionWriter(preds) as writer:
        for i in range(4):
            writer.add(f"v_{{i}}", PanopticFrame(ids, [SegmentInfo(7, 13, 2048, (0, 0, 64, 32))]))

    class ProbedSegmentChunks(SegmentChunks):
        # the pipeline's segmentation stage, plus a note of where Ray put this actor
        def __init__(self, host_kwargs):
            super().__init__(host_kwargs)
            note = {{"gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                     "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                     # where a network host of this actor would run (precomputed predictions have none)
                     "device": str(select_placement("auto").device)}}
            with open(os.path.join(probe_dir, f"actor-{{os.getpid()}}.json"), "w") as f:
                json.dump(note, f)

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    # start the work only once the whole pool is up, so every actor is constructed (and noted)
    ray.data.DataContext.get_current().wait_for_min_actors_s = 240
    config = LabelConfig(segmenter="precomputed", model=preds)
    plan = stage_plan(config, n_videos=4)
    rgb = np.zeros((1, 64, 64, 3), np.uint8)
    rows = [{{"video_id": "v", "image_ids": np.array([f"v_{{i}}"]), "error": "", "stage": "", "rgb": rgb}}
            for i in range(4)]
    ds = ray.data.from_items(rows).map_batches(ProbedSegmentChunks, **segment_stage_options(config, plan))
    out = ds.take_all()
    print(json.dumps({{"plan": plan, "errors": [r["error"] for r in out],
                      "segments": [[[s.to_json() for s in f] for f in segments_of(r, 1)] for r in out]}}))
    ray.shutdown()
""")


def test_segmentation_actors_get_one_fake_gpu_each_and_run_on_cpu(tmp_path):
    probe_dir = tmp_path / "probes"
    probe_dir.mkdir()
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(root=ROOT))
    done = subprocess.run([sys.executable, str(script), str(probe_dir), str(tmp_path / "preds")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["plan"]["gpus"] == 2 and result["plan"]["use_gpus"]
    assert result["plan"]["segment_actors"] == [2, 2]  # one actor per GPU; no autoscaler: a fixed pool
    notes = [json.loads(p.read_text()) for p in sorted(probe_dir.iterdir())]
    assert len(notes) == 2
    assert sorted(g for n in notes for g in n["gpu_ids"]) == ["0", "1"]  # one distinct GPU id per actor
    for note in notes:
        assert len(note["gpu_ids"]) == 1 and note["cuda_visible_devices"] == note["gpu_ids"][0]
        assert note["device"] == "cpu"  # CUDA is not really there: the host fell back to the CPU
    assert result["errors"] == [""] * 4  # … and segmented every frame there
    assert all(s == [[{"id": 7, "category_id": 13, "area": 2048, "bbox": [0, 0, 64, 32], "iscrowd": 0,
                       "score": 1.0}]] for s in result["segments"])


def test_without_gpus_the_segmentation_stage_asks_for_none(ray_local, tmp_path):
    config = LabelConfig(segmenter="precomputed", model=str(tmp_path))
    plan = stage_plan(config, n_videos=3)
    assert plan["gpus"] == 0 and plan["segment_actors"] == (2, 2) and plan["flow_actors"] == (1, 1)
    assert not plan["use_gpus"] and "no autoscaler" in plan["gpu_choice"]["reason"]
    assert segment_stage_options(config, plan)["num_gpus"] == 0
    held = (plan["segment_actors"][1] * plan["cpus"]["segment"] + plan["flow_actors"][1] * plan["cpus"]["flow"]
            + plan["association_actors"] * (plan["cpus"]["associate"] + plan["cpus"]["feeder"]))
    assert held + plan["cpus"]["decode"] + plan["cpus"]["sink"] <= 2  # actors leave room for the tasks


def test_placement_falls_back_to_cpu_when_ray_assigns_a_gpu_but_cuda_is_absent():
    given = select_placement("auto", cuda_available=False, environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert given.device.type == "cpu" and given.autocast_dtype is None and not given.pin_memory
    on_gpu = select_placement("auto", cuda_available=True, bf16_supported=True, environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert on_gpu.device.type == "cuda"
    no_gpu = select_placement("auto", cuda_available=True, environ={"CUDA_VISIBLE_DEVICES": ""})
    assert no_gpu.device.type == "cpu"  # Ray gave this actor no GPU: it must not touch one
