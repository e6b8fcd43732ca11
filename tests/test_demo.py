"""`make demo` runs `tubeflow demo`: the product end to end on a tiny synthetic corpus."""
import json

from jobs.cli import main


def test_demo_runs_end_to_end_and_tracking_beats_per_frame_ids(tmp_path, ray_local, capsys):
    assert main(["demo", "--out", str(tmp_path), "--videos", "2", "--frames", "16", "--height", "96",
                 "--width", "192"]) == 0
    out = capsys.readouterr().out
    for command in ("$ tubeflow synth", "$ tubeflow label", "$ tubeflow track", "$ tubeflow evaluate"):
        assert command in out
    labelled = json.loads((tmp_path / "labels" / "metrics" / "metrics.json").read_text())
    assert labelled["videos"] == 2 and not labelled["failures"]
    assert len(list((tmp_path / "labels" / "overlays").glob("*.avi"))) == 2
    assert len(list((tmp_path / "labels" / "_commits").glob("*.json"))) == 2
    perframe = json.loads((tmp_path / "eval_perframe" / "metrics.json").read_text())
    tracked = json.loads((tmp_path / "eval_tracked" / "metrics.json").read_text())
    # Identical masks per frame, so k=0 agrees; over time only tracked ids survive.
    assert abs(perframe["per_k"]["0"]["vpq"] - tracked["per_k"]["0"]["vpq"]) < 0.05
    assert tracked["per_k"]["15"]["vpq"] > perframe["per_k"]["15"]["vpq"] + 0.3
    assert (tmp_path / "eval_tracked" / "report.html").exists()
