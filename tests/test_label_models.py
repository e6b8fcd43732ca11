"""``tubeflow label --segmenter artifact --model X.pt`` with models of every output contract,
and what the label configuration makes of a model's contract, input spec and categories."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mask_models import TinyMaskFormer, export, padded_input, reference_panoptic
from operators.errors import FormatMismatchError
from operators.formats import segments_table
from operators.formats.categories import CITYSCAPES_CATEGORIES, Category, check_against_gt
from operators.segmentation.contracts import CONTRACTS
from operators.synth import SynthConfig, write_corpus
from operators.video import open_video
from pipelines.label.config import LabelConfig

IS_THING = [c.isthing for c in CITYSCAPES_CATEGORIES]
# a model's own classes: COCO-style ids, not contiguous, not Cityscapes'
OWN_CATEGORIES = [{"id": 3, "name": "ground", "isthing": 0}, {"id": 40, "name": "robot", "isthing": 1},
                  {"id": 7, "name": "wall", "isthing": 0, "color": [10, 20, 30]}]


class BandsPanopticMap(torch.nn.Module):
    """A finished-map model: id 1 + (red > ½) + 2·(green > ½) over the padded input; rows for
    ids 1–4 (ground, robot, robot, wall) and a padding row."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = 1 + (images[:, 0] > 0.5).long() + 2 * (images[:, 1] > 0.5).long()
        rows = torch.tensor([[1.0, 0.0, 0.9], [2.0, 1.0, 0.8], [3.0, 1.0, 0.7], [4.0, 2.0, 0.6], [0.0, 0.0, 0.0]])
        return {"panoptic": ids, "segments": rows.expand(images.shape[0], -1, -1)}


def _frames_by_id(segments_root: str) -> dict[tuple[str, int], list]:
    by_frame: dict = {}
    for row in segments_table.table_to_rows(segments_table.read_segments_table(segments_root)):
        by_frame.setdefault((row.video_id, row.frame_index), []).append(row)
    return by_frame


def _same_partition(rows, ids: np.ndarray, categories: dict[int, int], where: str) -> None:
    """The tracked rows of a frame paint exactly the host's segments, each with its category
    (the tracker renumbers segments; it must not move a pixel)."""
    frame = segments_table.rows_to_frame(rows, ids.shape)
    pairs = {(int(a), int(b)) for a, b in zip(ids.ravel(), frame.ids.ravel())}
    assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs}), where  # one-to-one
    assert (0, 0) in pairs or 0 not in ids, where
    category_of = {r.track_id: r.category_id for r in rows}
    for a, b in pairs:
        if a:
            assert category_of[b] == categories[a], where


def test_label_takes_every_contract(tmp_path, ray_local):
    """One small synthetic corpus labelled by three TorchScript models, one per contract, with
    ``--segmenter artifact --model X.pt`` and nothing else: through Ray Data (``tubeflow
    label``) for mask classification, whose output equals the per-pixel reference inference,
    and for the finished map, which comes through with the model's own categories (things
    tracked, stuff by class); through the same operators in a plain loop for Panoptic-DeepLab
    (whose artifacts the pipeline took before)."""
    from jobs import cli
    from operators.segmentation.host import SegmentationHost
    from operators.segmentation.model import PanopticNet, PanopticNetConfig
    from pipelines.sequential import label_sequentially

    write_corpus(str(tmp_path / "corpus"), SynthConfig(videos=2, frames=2, height=64, width=128, seed=3))
    videos = tmp_path / "corpus" / "videos"
    frames = {}
    for path in sorted(videos.iterdir()):
        with open_video(str(path)) as source:
            frames[path.stem] = np.stack(list(source.iter_frames()))
    torch.manual_seed(0)
    deeplab = PanopticNet(PanopticNetConfig(widths=(8, 8, 16, 16), decoder_channels=8, head_channels=8)).eval()
    models = {"mask-classification": export(TinyMaskFormer(seed=0), tmp_path / "mask2former.pt",
                                            torch.rand(1, 3, 64, 128)),
              "panoptic-map": export(BandsPanopticMap(), tmp_path / "bands.pt"),
              "panoptic-deeplab": export(deeplab, tmp_path / "deeplab.pt", torch.rand(1, 3, 64, 128))}
    (tmp_path / "bands.pt.categories.json").write_text(json.dumps({"categories": OWN_CATEGORIES}))
    for contract, model in models.items():
        out = tmp_path / f"out-{contract}"
        host = SegmentationHost("artifact", model)
        if contract == "panoptic-deeplab":
            config = LabelConfig(segmenter="artifact", model=model)
            label_sequentially([(p.stem, str(p)) for p in sorted(videos.iterdir())], host,
                               tracker=config.tracker_for(host.categories), segments_out=str(out / "segments"))
        else:
            code = cli.main(["label", "--input", str(videos), "--output", str(out), "--segmenter", "artifact",
                             "--model", model, "--chunk-frames", "2", "--no-progress"])
            assert code == 0, contract
            manifest = json.loads((out / "run_manifest.json").read_text())
            assert manifest["totals"] == {"ok": 2, "skipped": 0, "failed": 0}
        labelled = _frames_by_id(str(out / "segments"))
        for video_id, video in frames.items():
            for index, rgb in enumerate(video):
                (expected,) = host.segment([rgb])
                rows = labelled.get((video_id, index), [])
                where = f"{contract} {video_id} frame {index}"
                _same_partition(rows, expected.ids, {s.id: s.category_id for s in expected.segments}, where)
                if contract == "mask-classification":
                    with torch.no_grad():
                        raw = TinyMaskFormer(seed=0).eval()(padded_input(rgb[None]))
                    ref = reference_panoptic(raw["pred_logits"][0].numpy(), raw["pred_masks"][0].numpy(),
                                             (64, 128), (64, 128), IS_THING)
                    np.testing.assert_array_equal(expected.ids, ref.ids, err_msg=where)
                    assert len(rows) == len(ref.rows) > 0, where
                if contract == "panoptic-map":
                    assert {r.category_id: r.isthing for r in rows}.items() <= {3: False, 40: True, 7: False}.items()
                    assert all(r.track_id >= 1000 if r.isthing else r.track_id == r.category_id + 1 for r in rows)
        if contract == "panoptic-map":
            table = pq.read_table(out / "segments").to_pandas()
            assert set(table["category_id"]) == {3, 40, 7} and set(table[table.isthing]["category_id"]) == {40}


def test_config_hash_covers_contract_thresholds_input_spec_and_categories(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"model")
    config = LabelConfig(segmenter="artifact", model=str(model))
    checksums = {"segmenter": "x", "flow": "y"}
    base = config.config_hash(checksums)
    assert LabelConfig(segmenter="artifact", model=str(model), batch_size=3).config_hash(checksums) == base
    variants = [replace(config, contract="mask-classification"), replace(config, object_mask_threshold=0.7),
                replace(config, overlap_threshold=0.9)]
    hashes = {v.config_hash(checksums) for v in variants}
    assert len(hashes) == 3 and base not in hashes
    (tmp_path / "m.pt.input.json").write_text(json.dumps({"channel_order": "BGR"}))
    with_spec = config.config_hash(checksums)
    (tmp_path / "m.pt.categories.json").write_text(json.dumps(OWN_CATEGORIES))
    with_categories = config.config_hash(checksums)
    assert len({base, with_spec, with_categories}) == 3
    with pytest.raises(ValueError, match="--contract 'yolo'"):
        LabelConfig(segmenter="artifact", model=str(model), contract="yolo")
    with pytest.raises(ValueError, match="--contract 'panoptic-map'.*for --segmenter artifact"):
        LabelConfig(contract="panoptic-map")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        LabelConfig(segmenter="artifact", model=str(model), overlap_threshold=1.5)


def test_contract_options_reach_the_host_from_label_and_nightly():
    from jobs import label as label_job
    from jobs import nightly as nightly_job

    for job in (label_job, nightly_job):
        parser = argparse.ArgumentParser()
        job.add_arguments(parser)
        args = parser.parse_args(["--input", "in", "--output", "out", "--segmenter", "artifact", "--model", "m.pt",
                                  "--contract", "mask-classification", "--object-mask-threshold", "0.6",
                                  "--overlap-threshold", "0.7"])
        kwargs = label_job.config_from_args(args).host_kwargs()
        assert kwargs["contract"] == "mask-classification"
        assert (kwargs["mask_classification"].object_mask_threshold,
                kwargs["mask_classification"].overlap_threshold) == (0.6, 0.7)
        default = label_job.config_from_args(parser.parse_args(["--input", "in", "--output", "out"]))
        assert default.host_kwargs()["contract"] is None


def test_tracker_gates_follow_the_model_categories(tmp_path):
    from operators.association import TrackerConfig
    from operators.formats.categories import categories_from_json

    own = categories_from_json(OWN_CATEGORIES, "test")
    config = LabelConfig()
    assert config.tracker_for(CITYSCAPES_CATEGORIES) == config.tracker
    assert config.tracker_for(own).thing_category_ids == (40,)
    named = LabelConfig(tracker=TrackerConfig(thing_category_ids=(3,)))
    assert named.tracker_for(own).thing_category_ids == (3,)  # the user's choice stands


def test_model_categories_must_fit_the_gt():
    from operators.formats.categories import categories_from_json

    check_against_gt(CITYSCAPES_CATEGORIES, CITYSCAPES_CATEGORIES, "m.pt")
    with pytest.raises(FormatMismatchError, match=r"m.pt: .*category ids \[40\] are not in the GT's categories; "
                                                  r"categories \[3\] are things in one"):
        check_against_gt(categories_from_json(OWN_CATEGORIES, "x"),
                         [Category(3, "x", True, (0, 0, 0)), Category(7, "w", False, (0, 0, 0))], "m.pt")


def test_overlay_paints_stuff_in_the_model_category_colours():
    from operators.review.overlay import render_overlay

    from operators.formats.categories import categories_from_json

    ids = np.full((4, 4), 8, np.int32)  # stuff of category 7 leaves the tracker as id 8
    rgb = np.zeros((4, 4, 3), np.uint8)
    painted = render_overlay(rgb, ids, alpha=1.0, categories=categories_from_json(OWN_CATEGORIES, "x"))
    assert tuple(painted[1, 1]) == (10, 20, 30)
    assert tuple(render_overlay(rgb, ids, alpha=1.0)[1, 1]) == CITYSCAPES_CATEGORIES[7].color


def test_the_driver_hashes_the_config_without_importing_torch():
    """torch costs seconds to import; only the processes where a model lives need it, not the
    driver: it checks the default tracker's (composite's) shipped weights against their card
    (``check_models``), the hybrid tracker has none."""
    import subprocess
    import sys

    code = ("import sys; from pipelines.label.config import LabelConfig, check_models;"
            "from operators.association import TrackerConfig;"
            "method = sys.argv[1]; config = LabelConfig(tracker=TrackerConfig(**({'method': method} if method else {})));"
            "check_models(config); config.config_hash(config.model_checksums()); config.host_kwargs();"
            "print(config.tracker.method, 'torch' in sys.modules)")
    for method in ("", "hybrid"):  # "": the default
        done = subprocess.run([sys.executable, "-c", code, method], capture_output=True, text=True, check=True)
        assert done.stdout.split()[1] == "False", done.stdout
