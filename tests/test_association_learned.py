"""The learned tracker: network shapes, determinism, checkpoints, the shipped weights on a crossing,
the CLI's --tracker and the label config hash."""
import argparse
import dataclasses
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from association_scenes import CAR, PERSON, Box, identity_switches, scrambled_video  # noqa: E402
from operators.association import TrackChunk, TrackerConfig, VideoOperator, VideoTracker  # noqa: E402
from operators.association.learned import LEARNED_WEIGHTS, LearnedTracker, graph_features, load_model  # noqa: E402
from operators.association.methods import make_tracker  # noqa: E402
from operators.association.learned_model import (DETECTION_FEATURES, EDGE_FEATURES, TRACK_FEATURES,  # noqa: E402
                                                 TrackGraphNet)
from operators.errors import InputError  # noqa: E402
from operators.formats.categories import CITYSCAPES_THING_IDS  # noqa: E402
from operators.formats.panoptic import validate_frame  # noqa: E402

LEARNED = TrackerConfig(method="learned")


def crossing_look_alikes():
    """Two cars of one colour driving towards each other on nearly the same line (they overlap
    while crossing), a person, and a car of another colour."""
    return [Box(14001, CAR, 5, 30, 14, 10, 3, 0, (200, 30, 30)),
            Box(14002, CAR, 75, 36, 14, 10, -3, 0, (200, 30, 30)),
            Box(12001, PERSON, 40, 20, 6, 14, 0, 1, (30, 200, 30)),
            Box(14003, CAR, 80, 50, 10, 8, 2, 0, (30, 30, 200))]


def test_network_shapes_and_weights_size():
    net = TrackGraphNet(CITYSCAPES_THING_IDS)
    n_t, n_d = 5, 3
    state = torch.zeros(n_t, net.state_size)
    match, new, t, d, e = net.associate(torch.randn(n_t, TRACK_FEATURES), state, torch.randn(n_d, DETECTION_FEATURES),
                                        torch.randn(n_t, n_d, EDGE_FEATURES), torch.ones(n_t, n_d))
    assert match.shape == (n_t, n_d) and new.shape == (n_d,)
    assert t.shape == (n_t, net.width) and d.shape == (n_d, net.width) and e.shape == (n_t, n_d, net.width)
    existing, created = net.update_state(state, t, d, e, torch.tensor([2, -1, 0, -1, -1]), torch.tensor([1]))
    assert existing.shape == (n_t, net.state_size) and created.shape == (1, net.state_size)
    score, classes = net.track_heads(torch.cat([existing, created]))
    assert score.shape == (n_t + 1,) and classes.shape == (n_t + 1, len(CITYSCAPES_THING_IDS))
    # empty graphs (first frame: no tracks; a frame without things) go through
    match, new, t, d, e = net.associate(torch.zeros(0, TRACK_FEATURES), torch.zeros(0, net.state_size),
                                        torch.randn(n_d, DETECTION_FEATURES), torch.zeros(0, n_d, EDGE_FEATURES),
                                        torch.zeros(0, n_d))
    assert match.shape == (0, n_d) and new.shape == (n_d,)
    assert os.path.getsize(LEARNED_WEIGHTS) <= 5 * 2 ** 20


def test_graph_features_describe_the_frame():
    video = scrambled_video(crossing_look_alikes(), 3)
    tracker = LearnedTracker("v", LEARNED)
    tracker.update(video[0][0])
    obs = tracker._observe(video[1][0])
    graph = graph_features(tracker, obs, CITYSCAPES_THING_IDS)
    assert graph.track_features.shape == (4, TRACK_FEATURES) and graph.detection_features.shape == (4, DETECTION_FEATURES)
    assert graph.edge_features.shape == (4, 4, EDGE_FEATURES)
    # the person may only be matched to the person track: the class gate
    assert graph.mask.sum() == 3 * 3 + 1
    # the warped-mask overlap of every true pair is high, of the person with the cars zero
    best = graph.edge_features[..., 0].max(axis=1)
    assert (best > 0.5).all()
    off = graph.edge_features[..., 0] * (1 - graph.mask)
    assert off.max() == 0


@pytest.mark.parametrize("missed", [(), (9, 10, 11)])
def test_tracker_keeps_crossing_look_alikes_apart_with_the_shipped_weights(missed):
    """The look-alikes cross at frames 10–12; ``missed``: frames where one of them has no
    detection (it comes back next to its twin). An untrained network fails both."""
    boxes = [dataclasses.replace(b, hidden=frozenset(missed)) if b.gt_id == 14001 else b for b in crossing_look_alikes()]
    video = scrambled_video(boxes, 20)
    tracker = make_tracker("v", LEARNED)
    assert isinstance(tracker, LearnedTracker)
    outputs = [tracker.update(f) for f, _, _ in video]
    switches, seen = identity_switches(outputs, [gt for _, gt, _ in video])
    assert switches == 0
    assert all(len(ids) == 1 for ids in seen.values())
    assert len({next(iter(ids)) for ids in seen.values()}) == len(seen)
    for out in outputs:
        validate_frame(out, "output")


def test_learned_tracker_is_deterministic():
    video = scrambled_video(crossing_look_alikes(), 10, seed=3)
    first = [LearnedTracker("v", LEARNED).update(f) for f, _, _ in video[:1]]
    runs = []
    for _ in range(2):
        tracker = LearnedTracker("v", LEARNED)
        runs.append([tracker.update(f) for f, _, _ in video])
    for a, b in zip(*runs):
        assert np.array_equal(a.ids, b.ids) and a.segments == b.segments
    assert np.array_equal(first[0].ids, runs[0][0].ids)


def test_checkpoint_mid_video_resumes_exactly():
    """The actor restart path: VideoOperator.checkpoint → CheckpointStore → restore, mid-video."""
    from pipelines.label.association_actor import CheckpointStore

    video = scrambled_video(crossing_look_alikes(), 16, seed=4)
    frames = [f for f, _, _ in video]
    whole = VideoOperator("v", LEARNED)
    expected = whole.push(0, 8, TrackChunk("v", 0, 8, frames[:8])) + whole.push(8, 16, TrackChunk("v", 8, 16, frames[8:]))

    first = VideoOperator("v", LEARNED)
    out = first.push(0, 8, TrackChunk("v", 0, 8, frames[:8]))
    assert isinstance(first.tracker, LearnedTracker) and first.tracker.track_state
    store = CheckpointStore(str(__import__("tempfile").mkdtemp()))
    store.save("v", first)
    resumed = store.load("v", 8)
    resumed.resolve = lambda chunk: chunk
    assert isinstance(resumed.tracker, LearnedTracker)
    out += resumed.push(8, 16, TrackChunk("v", 8, 16, frames[8:]))
    for a, b in zip(expected, out):
        assert np.array_equal(a.panoptic.ids, b.panoptic.ids) and a.panoptic.segments == b.panoptic.segments
    # the recurrent state itself came back
    for tid, state in first.tracker.track_state.items():
        assert np.array_equal(state, store.load("v", 8).tracker.track_state[tid])


def test_checkpoint_of_other_weights_is_refused(tmp_path, monkeypatch):
    from operators.association import learned

    video = scrambled_video(crossing_look_alikes(), 2)
    op = VideoOperator("v", LEARNED)
    op.push(0, 2, TrackChunk("v", 0, 2, [f for f, _, _ in video]))
    blob = op.checkpoint()
    other = tmp_path / "other.pt"
    other.write_bytes(_tiny_weights(seed=1))
    monkeypatch.setattr(learned, "weights_path", lambda config: str(other))  # the run now names other weights
    with pytest.raises(InputError, match="weights"):
        VideoOperator.restore(blob)


def test_a_bad_weights_file_is_one_error_naming_it(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torch")
    with pytest.raises(InputError, match="bad.pt"):
        load_model(str(bad))
    with pytest.raises(InputError, match="missing.pt"):
        LearnedTracker("v", dataclasses.replace(LEARNED, learned_weights=str(tmp_path / "missing.pt")))


@pytest.mark.parametrize("content", [b"not torch", None])
def test_track_without_usable_shipped_weights_is_one_line_and_the_hybrid_still_runs(tmp_path, monkeypatch, capsys,
                                                                                    content):
    """The default tracker loads the shipped weights: a missing or corrupt file is one line naming
    it and saying how to run without it, before any video; ``--tracker hybrid`` needs no weights."""
    from test_association_cli import args, make_dirs, write_inputs

    from jobs.cli import main
    from operators.association import learned

    shipped = tmp_path / "weights" / "learned_tracker.pt"
    if content is not None:
        shipped.parent.mkdir()
        shipped.write_bytes(content)
    monkeypatch.setattr(learned, "LEARNED_WEIGHTS", str(shipped))
    make_dirs(tmp_path)
    write_inputs(tmp_path, ("0000",))
    capsys.readouterr()
    assert main(args(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.count(str(shipped)) == 1 and "--tracker hybrid" in err, err
    assert ("not a learned tracker weights file" if content else "not readable") in err
    assert main(args(tmp_path, "--tracker", "hybrid")) == 0


def test_the_shipped_weights_are_in_the_installed_package(tmp_path):
    """The default tracker loads ``operators/association/weights/learned_tracker.pt``: a wheel built
    from the repository (pyproject's package data) must carry it, and its metadata beside it."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"   # the package with the shipped weights, not the whole repository
    (source / "operators").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "operators/__init__.py"):
        shutil.copy(root / name, source / name)
    shutil.copytree(root / "operators" / "association", source / "operators" / "association",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("tubeflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = Path(LEARNED_WEIGHTS).relative_to(root).as_posix()
    assert {shipped, shipped + ".json", "operators/association/learned.py"} <= names


def _tiny_weights(seed: int) -> bytes:
    from operators.training.tracker_data import record_clip, training_clips
    from operators.training.tracker_loop import TrackerTrainConfig, train_tracker, weights_bytes

    config = TrackerTrainConfig(seed=seed, clips=1, frames=4, epochs=1, width=8, state=8, blocks=1)
    clips = [record_clip(spec, height=64, width=128) for spec in training_clips(seed, 1, 4)]
    net, _ = train_tracker(config, clips, log=lambda line: None)
    return weights_bytes(net, config)


def test_training_is_deterministic_by_seed():
    assert _tiny_weights(seed=0) == _tiny_weights(seed=0)


def test_recording_gives_the_true_assignment():
    from operators.training.tracker_data import record_clip, training_clips

    records = record_clip(training_clips(3, 1, 6)[0], height=128, width=256, flow="gt")
    assert records[0].new_target.sum() == records[0].true_detection.sum() > 0  # frame 0: every true object is new
    for r in records[1:]:
        # each detection has at most one true track, and is either matched, new or spurious
        assert (r.edge_target.sum(axis=0) <= 1).all()
        assert np.array_equal(r.edge_target.sum(axis=0) + r.new_target, r.true_detection)
        assert (r.edge_target <= r.graph.mask).all()  # a true pair is never gated away


def test_tracker_flag_reaches_the_config_of_track_label_and_nightly():
    from jobs import label, nightly, track

    for module, extra in ((label, ["--input", "x", "--output", "y"]), (nightly, ["--input", "x", "--output", "y"])):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert label.config_from_args(parser.parse_args(extra)).tracker.method == "composite"
        for method in ("hybrid", "learned", "assisted", "composite"):
            config = label.config_from_args(parser.parse_args(extra + ["--tracker", method]))
            assert config.tracker.method == method
    parser = argparse.ArgumentParser()
    track.add_arguments(parser)
    parsed = parser.parse_args(["--images", "i", "--perframe-json", "p", "--perframe-dir", "d", "--out", "o",
                                "--tracker", "learned"])
    assert parsed.tracker == "learned"


@pytest.mark.parametrize("method", ["learned", "composite", None])
def test_track_command_runs_the_learned_tracker(tmp_path, monkeypatch, method):
    """``--tracker learned`` / ``composite`` run that tracker; no ``--tracker`` runs the composite
    (the default); ``--tracker hybrid`` runs none of the network's trackers."""
    from test_association_cli import args, make_dirs, write_inputs

    from jobs.cli import main
    from operators.association.methods import _TRACKERS

    calls = []
    cls = _TRACKERS[method or "composite"]
    original = cls.update
    monkeypatch.setattr(cls, "update", lambda self, frame: calls.append(frame.frame_index) or original(self, frame))
    make_dirs(tmp_path)
    write_inputs(tmp_path, ("0000",))
    assert main(args(tmp_path, *(("--tracker", method) if method else ()))) == 0
    assert len(calls) == 8
    calls.clear()
    assert main(args(tmp_path, "--tracker", "hybrid")) == 0
    assert calls == []


def test_config_hash_includes_the_tracker_and_its_weights(tmp_path, monkeypatch):
    from pipelines.label.config import LabelConfig

    hybrid, learned = LabelConfig(tracker=TrackerConfig(method="hybrid")), LabelConfig(tracker=LEARNED)
    sums = hybrid.model_checksums()
    assert "tracker" not in sums
    learned_sums = learned.model_checksums()
    assert len(learned_sums["tracker"]) == 64
    assert LabelConfig().model_checksums()["tracker"] == learned_sums["tracker"]  # the default composite's too
    assert hybrid.config_hash(sums) != learned.config_hash(learned_sums)
    other = tmp_path / "other.pt"
    other.write_bytes(_tiny_weights(seed=2))
    retrained = LabelConfig(tracker=dataclasses.replace(LEARNED, learned_weights=str(other)))
    assert retrained.model_checksums()["tracker"] != learned_sums["tracker"]
    assert retrained.config_hash(retrained.model_checksums()) != learned.config_hash(learned_sums)


def test_composite_is_the_default_and_a_video_tracker_is_the_hybrid():
    from operators.association.assisted import CompositeTracker
    from operators.association.methods import tracker_from_state

    assert TrackerConfig().method == "composite"
    assert type(make_tracker("v")) is CompositeTracker and type(make_tracker("v", TrackerConfig())) is CompositeTracker
    assert type(make_tracker("v", TrackerConfig(method="hybrid"))) is VideoTracker
    assert VideoOperator("v").tracker.config.method == "composite"
    with pytest.raises(ValueError, match="method"):
        TrackerConfig(method="magic")
    # a VideoTracker (or a subclass that keeps its stages) is the hybrid whatever the config says,
    # and its checkpoint comes back as the hybrid, not as the default composite
    video = scrambled_video(crossing_look_alikes(), 8, seed=2)
    for hybrid in (VideoTracker("v"), VideoTracker("v", TrackerConfig(max_lost_frames=5))):
        assert hybrid.config.method == "hybrid"
        whole = VideoTracker("v", hybrid.config)
        expected = [whole.update(f) for f, _, _ in video]
        out = [hybrid.update(f) for f, _, _ in video[:4]]
        resumed = tracker_from_state(*hybrid.state())
        assert type(resumed) is VideoTracker and resumed.config == hybrid.config
        out += [resumed.update(f) for f, _, _ in video[4:]]
        assert all(np.array_equal(a.ids, b.ids) and a.segments == b.segments for a, b in zip(expected, out))
    assert LearnedTracker("v").config.method == "learned"


def test_a_checkpoint_from_before_tracker_methods_resumes_as_the_hybrid():
    """Checkpoints written before ``TrackerConfig.method`` existed have no ``"method"``: the hybrid
    wrote them, so they resume as the hybrid, not as today's default."""
    import json

    from operators.association.methods import tracker_from_state

    video = scrambled_video(crossing_look_alikes(), 8, seed=2)
    whole = VideoTracker("v")
    expected = [whole.update(f) for f, _, _ in video]
    first = VideoTracker("v")
    out = [first.update(f) for f, _, _ in video[:4]]
    meta, arrays = first.state()
    record = json.loads(meta["config"])
    del record["method"], record["learned_weights"]
    resumed = tracker_from_state({**meta, "config": json.dumps(record)}, arrays)
    assert type(resumed) is VideoTracker and resumed.config.method == "hybrid"
    out += [resumed.update(f) for f, _, _ in video[4:]]
    assert all(np.array_equal(a.ids, b.ids) and a.segments == b.segments for a, b in zip(expected, out))


def test_train_tracker_command_writes_loadable_weights(tmp_path):
    import json

    from jobs.cli import main

    out = tmp_path / "tracker.pt"
    assert main(["train", "--tracker", "--seed", "5", "--tracker-clips", "1", "--tracker-frames", "3",
                 "--tracker-epochs", "1", "--match-threshold", "0.4", "--no-recurrent", "--out", str(out)]) == 0
    model = load_model(str(out))
    assert model.meta["match_threshold"] == 0.4 and model.meta["recurrent"] is False
    log = json.loads((tmp_path / "tracker.pt.json").read_text())
    assert log["sha256"] == model.sha256 and log["config"]["seed"] == 5 and len(log["history"]) == 1
    video = scrambled_video(crossing_look_alikes(), 3)
    tracker = make_tracker("v", dataclasses.replace(LEARNED, learned_weights=str(out)))
    for frame, _, _ in video:
        validate_frame(tracker.update(frame), "output")


def test_learned_tracker_ignores_segment_embeddings():
    """Trained on the colour descriptor's likelihoods: a segmenter's embeddings (another scale)
    must not change its answer."""
    video = scrambled_video(crossing_look_alikes(), 6, seed=2)
    rng = np.random.default_rng(0)
    plain, with_embeddings = LearnedTracker("v", LEARNED), LearnedTracker("v", LEARNED)
    for frame, _, _ in video:
        embedded = dataclasses.replace(frame, embeddings={s.id: rng.normal(size=16) for s in frame.panoptic.segments})
        a, b = plain.update(frame), with_embeddings.update(embedded)
        assert np.array_equal(a.ids, b.ids) and a.segments == b.segments


@pytest.mark.slow
def test_label_pipeline_with_the_learned_tracker_equals_the_sequential_loop(tmp_path, ray_local):
    """``label`` with ``--tracker learned`` on Ray (association actors in chunks of 4 frames,
    checkpointed) gives the ids of the learned tracker run frame by frame."""
    from test_label_pipeline import IMAGE_ID, make_corpus

    from operators.formats import segments_table
    from operators.segmentation.precomputed import PrecomputedSegmenter
    from pipelines.label import label
    from pipelines.label.config import LabelConfig
    from pipelines.sequential import label_sequentially

    corpus = make_corpus(tmp_path / "corpus", videos=2, frames=10)
    config = LabelConfig(segmenter="precomputed", model=f"{corpus}/perframe", image_id_format=IMAGE_ID,
                         chunk_frames=4, tracker=LEARNED)
    label(f"{corpus}/videos", str(tmp_path / "out"), config, progress=False, log=lambda *_: None)
    table = segments_table.read_segments_table(str(tmp_path / "out" / "segments"))
    rebuilt = {(f.video_id, f.frame_index): f.frame for f in segments_table.iter_table_frames(table)}
    host = PrecomputedSegmenter(f"{corpus}/perframe")
    videos = [(v, f"{corpus}/videos/{v}.mp4") for v in ("0000", "0001")]
    reference = label_sequentially(videos, host, tracker=config.tracker_for(host.categories),
                                   image_id=lambda v, i: IMAGE_ID.format(video_id=v, frame_index=i))
    hybrid = label_sequentially(videos, host, image_id=lambda v, i: IMAGE_ID.format(video_id=v, frame_index=i))

    def scores(frame):
        return [round(s.score, 4) for s in frame.segments if s.id >= 1000]

    checked, differs = 0, False
    for video_id, frames in reference.frames.items():
        for index, expected in enumerate(frames):
            got = rebuilt[(video_id, index)]
            np.testing.assert_array_equal(got.ids, expected.ids, err_msg=f"video {video_id} frame {index}")
            # the track scores are the learned score head's, not the hybrid's running mean
            assert scores(got) == scores(expected)
            differs |= scores(expected) != scores(hybrid.frames[video_id][index])
            checked += 1
    assert checked == 20 and differs


def test_learned_tracker_keeps_its_own_births():
    """The hybrid's tentative newcomers (``tentative_max_area``) do not apply: the new-track head
    decides which segments start tracks. A person that appears mid-video is output in its first
    frame whatever the setting (the hybrid holds it back, see test_association_tracker)."""
    boxes = crossing_look_alikes() + [Box(12002, PERSON, 60, 10, 6, 8, 0, 0, (30, 200, 30),
                                          hidden=frozenset(range(3)))]
    video = scrambled_video(boxes, 6, seed=3)
    on = LearnedTracker("v", dataclasses.replace(LEARNED, tentative_max_area=1.0))
    off = LearnedTracker("v", dataclasses.replace(LEARNED, tentative_max_area=0.0))
    hybrid = VideoTracker("v", TrackerConfig(method="hybrid", tentative_max_area=1.0))
    for t, (frame, gt, _) in enumerate(video):
        a, b, h = on.update(frame), off.update(frame), hybrid.update(frame)
        assert np.array_equal(a.ids, b.ids) and a.segments == b.segments
        if t == 3:
            newcomer = gt.ids == 12002
            assert (h.ids[newcomer] == 0).all() and (a.ids[newcomer] != 0).all()


ASSISTED = TrackerConfig(method="assisted")


def test_assisted_tracker_assigns_on_the_network_probabilities(monkeypatch):
    """The assisted tracker's stages match what the network prefers, inside the hybrid's gates: a
    network that swaps two side-by-side cars swaps them (the hybrid's own affinity keeps them),
    and one that pairs a car with a person is gated by class."""
    boxes = [Box(14001, CAR, 20, 20, 12, 10, 1, 0, (200, 30, 30)), Box(14002, CAR, 36, 20, 12, 10, 1, 0, (200, 30, 30)),
             Box(12001, PERSON, 60, 30, 6, 14, 0, 0, (30, 200, 30))]
    video = scrambled_video(boxes, 2, seed=5)
    tracker = make_tracker("v", ASSISTED)
    assert type(tracker).__name__ == "AssistedTracker" and isinstance(tracker, LearnedTracker)
    hybrid = VideoTracker("v", TrackerConfig(method="hybrid"))
    first, first_h = tracker.update(video[0][0]), hybrid.update(video[0][0])
    gt0 = video[0][1].ids

    def id_of(out, gt, gt_id):
        return int(np.bincount(out.ids[gt == gt_id]).argmax())

    gt_of_track = {id_of(first, gt0, g): g for g in (14001, 14002, 12001)}
    swap = {14001: 14002, 14002: 14001}
    real = tracker._network

    def network(graph):  # the two cars swapped; every car track matches the person best
        real(graph)      # (keeps what the recurrent update needs)
        col_gt = [video[1][2][video[1][0].panoptic.segments[c].id] for c in graph.columns]
        match = np.zeros((len(graph.track_ids), len(col_gt)))
        for i, t in enumerate(graph.track_ids):
            own = gt_of_track[int(t)]
            for j, g in enumerate(col_gt):
                match[i, j] = 1.0 if own in swap and g == 12001 else 0.9 if swap.get(own, own) == g else 0.0
        return match, np.ones(len(col_gt))

    monkeypatch.setattr(tracker, "_network", network)
    out, out_h = tracker.update(video[1][0]), hybrid.update(video[1][0])
    gt1 = video[1][1].ids
    for g, other in ((14001, 14002), (14002, 14001)):
        assert id_of(out_h, gt1, g) == id_of(first_h, gt0, g)      # the hybrid keeps them
        assert id_of(out, gt1, g) == id_of(first, gt0, other)      # the network's swap is followed
    assert id_of(out, gt1, 12001) == id_of(first, gt0, 12001)      # car tracks never take the person


@pytest.mark.parametrize("method", ["assisted", "composite"])
def test_assisted_tracker_keeps_look_alikes_apart_and_holds_small_newcomers_back(method):
    boxes = [dataclasses.replace(b, hidden=frozenset((9, 10, 11))) if b.gt_id == 14001 else b
             for b in crossing_look_alikes()] + [Box(12002, PERSON, 60, 10, 6, 8, 0, 0, (30, 200, 30),
                                                     hidden=frozenset(range(3)))]
    video = scrambled_video(boxes, 20)
    tracker = make_tracker("v", TrackerConfig(method=method, tentative_max_area=1.0))
    outputs = [tracker.update(f) for f, _, _ in video]
    switches, seen = identity_switches(outputs, [gt for _, gt, _ in video])
    assert switches == 0 and all(len(ids) == 1 for ids in seen.values())
    newcomer = video[3][1].ids == 12002     # the hybrid's tentative newcomer: held back one frame
    assert (outputs[3].ids[newcomer] == 0).all() and (outputs[4].ids[video[4][1].ids == 12002] != 0).all()


@pytest.mark.parametrize("method", ["assisted", "composite"])
def test_assisted_checkpoint_resumes_exactly_and_hashes_the_weights(method):
    from operators.association.methods import _TRACKERS, tracker_from_state
    from pipelines.label.config import LabelConfig

    config = TrackerConfig(method=method)
    video = scrambled_video(crossing_look_alikes(), 12, seed=4)
    whole = make_tracker("v", config)
    expected = [whole.update(f) for f, _, _ in video]
    first = make_tracker("v", config)
    assert type(first) is _TRACKERS[method]
    out = [first.update(f) for f, _, _ in video[:6]]
    resumed = tracker_from_state(*first.state())
    assert type(resumed) is type(first) and resumed.track_state
    out += [resumed.update(f) for f, _, _ in video[6:]]
    for a, b in zip(expected, out):
        assert np.array_equal(a.ids, b.ids) and a.segments == b.segments
    label, others = LabelConfig(tracker=config), [LabelConfig(tracker=TrackerConfig(method=m)) for m in
                                                  ("hybrid", "learned", "assisted", "composite") if m != method]
    sums = label.model_checksums()
    assert sums["tracker"] == LabelConfig(tracker=LEARNED).model_checksums()["tracker"]
    assert all(label.config_hash(sums) != other.config_hash(other.model_checksums()) for other in others)


COMPOSITE = TrackerConfig(method="composite")


def test_vouched_pairs_are_the_mutual_best_overlaps_of_at_least_one_half():
    from operators.association.assisted import vouched_pairs

    pixel = np.array([[0.8, 0.6, 0.0],    # row 0: best 0.8 at column 0, which is also column 0's best
                      [0.7, 0.55, 0.0],   # row 1: best 0.7 at column 0, but column 0's best is row 0
                      [0.0, 0.0, 0.45],   # row 2: mutual best but below 0.5
                      [0.0, 0.9, 0.0]])   # row 3: mutual best 0.9, but the gate forbids it below
    gate = np.ones(pixel.shape, bool)
    assert vouched_pairs(pixel, gate).tolist() == [[True, False, False], [False, False, False],
                                                   [False, False, False], [False, True, False]]
    gate[3, 1] = False   # now column 1's best allowed overlap is row 1's 0.55, whose own best is column 0
    assert vouched_pairs(pixel, gate).tolist() == [[True, False, False]] + [[False] * 3] * 3
    assert vouched_pairs(np.zeros((0, 2)), np.zeros((0, 2), bool)).shape == (0, 2)


def _stage_case():
    """Tracks A, B, C × segments x, y, z: the hand-set affinity, the network's probabilities and the
    warped-mask overlaps (A–x vouched for)."""
    hand = np.array([[0.70, 0.10, 0.00],
                     [0.30, 0.60, 0.25],
                     [0.00, 0.21, 0.10]])
    network = np.array([[0.05, 0.99, 0.00],
                        [0.99, 0.60, 0.90],
                        [0.00, 0.30, 0.95]])
    pixel = np.array([[0.80, 0.00, 0.00],
                      [0.30, 0.20, 0.00],
                      [0.00, 0.00, 0.00]])
    return hand, network, pixel


def test_composite_decides_by_the_floor_the_mutual_check_and_the_network(monkeypatch):
    """(a) the network only among pairs whose hand-set affinity passes the stage's floor; (b) a pair
    the warped masks vouch for is the hand-set affinity's; the rest is the network's."""
    from operators.association.assignment import assign
    from operators.association.assisted import AssistedTracker, CompositeTracker

    hand, network, pixel = _stage_case()
    gate = np.ones(hand.shape, bool)
    composite, assisted = make_tracker("v", COMPOSITE), make_tracker("v", ASSISTED)
    assert type(composite) is CompositeTracker and type(assisted) is AssistedTracker
    for tracker in (composite, assisted):
        monkeypatch.setattr(tracker, "_decision_affinity", lambda tracks, cols, affinity_: network)
    tracks, cols = [None] * 3, np.arange(3)
    # the hybrid alone: A–x, B–y; the assisted tracker: the network's best total (A–y, B–x, C–z)
    assert assign(hand, gate, "hungarian", 0.2) == [(0, 0), (1, 1)]
    assert assisted._stage_pairs(tracks, cols, hand, gate, 0.2, pixel) == [(0, 1), (1, 0), (2, 2)]
    # stage 2: A–x vouched for (the network's A–y and B–x not taken); among B, C × y, z the network
    # decides, but C–z (hand-set 0.10 < 0.2) is not a candidate: B–z, C–y
    assert composite._stage_pairs(tracks, cols, hand, gate, 0.2, pixel) == [(0, 0), (1, 2), (2, 1)]
    # stage 3 (no overlaps): the floor alone; A–y (hand-set 0.10) and C–z are out, A–x (0.05) is
    # below the floor on the network's side: B–x, C–y, A unmatched
    assert composite._stage_pairs(tracks, cols, hand, gate, 0.2, None) == [(1, 0), (2, 1)]
    # with a floor of 0, C–z (network 0.95) is a candidate too: B–y, C–z
    assert composite._stage_pairs(tracks, cols, hand, gate, 0.0, pixel) == [(0, 0), (1, 1), (2, 2)]
    # a pair the gate forbids is never vouched for: the floor rule alone then, as in stage 3
    gate[0, 0] = False
    assert composite._stage_pairs(tracks, cols, hand, gate, 0.2, pixel) == [(1, 0), (2, 1)]


def test_composite_outputs_the_class_votes_not_the_class_head(monkeypatch):
    """(c) a car flipped to truck for one frame, with a class head that says truck every frame: the
    composite tracker outputs car (the track's votes), the assisted tracker follows the head."""
    from operators.association.learned import LearnedTracker

    truck = CAR + 1
    boxes = [Box(14001, CAR, 10, 30, 14, 10, 2, 0, (200, 30, 30), category_at={3: truck}),
             Box(12001, PERSON, 60, 20, 6, 14, 0, 1, (30, 200, 30))]
    video = scrambled_video(boxes, 6)
    real = LearnedTracker._recurrent_update

    def head_says_truck(self, obs, matches):
        real(self, obs, matches)
        for tid in self.learned_class:
            if self.tracks[tid].category_id == CAR:
                self.learned_class[tid] = truck

    monkeypatch.setattr(LearnedTracker, "_recurrent_update", head_says_truck)
    for config, expected in ((COMPOSITE, CAR), (ASSISTED, truck)):
        tracker = make_tracker("v", config)
        outputs = [tracker.update(f) for f, _, _ in video]
        car = [{s.category_id for s in out.segments if s.id == int(np.bincount(out.ids[gt.ids == 14001]).argmax())}
               for out, (_, gt, _) in zip(outputs, video)]
        assert all(c == {expected} for c in car), (config.method, car)

