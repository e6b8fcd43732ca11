"""Nightly reprocessing: label what is new or changed, then rebuild the run-level outputs
(``pred.json``, ``metrics/``) over every committed video of the output root."""
from __future__ import annotations

from pipelines.commit import OutputLayout
from pipelines.label import LabelRun, evaluation_settings, label
from pipelines.label_config import LabelConfig
from pipelines.label_outputs import aggregate_metrics, write_predictions_json


def nightly(input_uri: str, output_uri: str, config: LabelConfig, *, address: str | None = None,
            force: bool = False, progress: bool = True, log=print) -> LabelRun:
    """:func:`pipelines.label.label` (unchanged videos are skipped by their commit markers),
    then metrics and ``pred.json`` over the whole output, not only this night's corpus."""
    run = label(input_uri, output_uri, config, address=address, force=force, progress=progress, log=log)
    layout = OutputLayout(str(output_uri).rstrip("/"))
    if config.gt_json:
        from operators.formats.vps_layout import read_ground_truth

        categories = read_ground_truth(config.gt_json, config.gt_dir).categories
        run.report = aggregate_metrics(layout, evaluation_settings(config, categories))
    if config.write_png:
        write_predictions_json(layout)
    changed = sum(r.status != "skipped" for r in run.results)
    log(f"nightly: {changed} new or changed video(s) processed, {len(run.results) - changed} unchanged")
    return run
