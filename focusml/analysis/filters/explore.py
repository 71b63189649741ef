"""From a run id to a logged report: the filter explorer behind `focusml filters`.

`explore` loads a run's model (its `checkpoints/last.pt` state dict with
`torch.load(weights_only=True)`, else the logged MLflow model) and rebuilds the run's dataset from
its params (both through `focusml.tracking`), analyses it (`stats`), writes the HTML report with
PNG figures (`report`) and logs that folder to the run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from focusml import FocusmlError, tracking
from focusml.analysis.filters.report import Report, write_report
from focusml.analysis.filters.stats import analyse, match_filters, pick_rows


def explore(run_id: str, compare: str | None = None, out_dir: str | os.PathLike | None = None, split: str = "val",
            max_images: int | None = 500, top: int = 6, figures: int = 20, match: str = "auto",
            log: bool = True) -> Report:
    """Analyse run `run_id` (and `compare`), write the report to `out_dir`, log it to the run under `filters/`."""
    run = tracking.run_info(run_id)
    run_id, params = run.info.run_id, run.data.params
    compare = tracking.run_info(compare).info.run_id if compare else None
    warnings = []
    data = tracking.load_run_data(params)
    fp = params.get("dataset_fingerprint")
    if fp and fp != data.fingerprint:
        warnings.append(f"the dataset rebuilt from the run's params differs from the one it trained on "
                        f"(fingerprint {data.fingerprint} ≠ {fp}): its files changed since.")
    c, h, w = data.image_shape
    model = tracking.load_run_model(run_id, image_size=max(h, w))
    sp = data.split(split)
    index = pick_rows(len(sp), max_images)
    analysis = analyse(model, sp, index, top=top)
    title = run.info.run_name or run_id[:8]
    report = Report(run_id, title, split, data.classes, analysis, warnings=warnings)
    if compare:
        other = tracking.run_info(compare)
        if other.data.params.get("dataset") != params.get("dataset"):
            warnings.append(f"run {compare} trained on dataset {other.data.params.get('dataset')!r}, "
                            f"not {params.get('dataset')!r}; both are analysed on the latter.")
        model_b = tracking.load_run_model(compare, image_size=max(h, w))
        if model_b.classifier.weight.shape[0] != data.num_classes:
            raise FocusmlError(f"run {compare} has {model_b.classifier.weight.shape[0]} classes, "
                               f"run {run_id} {data.num_classes}: compare runs on the same dataset.")
        if match == "auto":
            started = other.data.params.get("pretrained") or other.data.params.get("init_from")  # fine-tuned weights
            match = "index" if started else "activation"
        partner, corr = match_filters(model, model_b, sp, index, match)
        report.compare = analyse(model_b, sp, index, top=top)
        report.compare_run_id, report.compare_title = compare, other.info.run_name or compare[:8]
        if report.compare_title == report.title:
            report.title, report.compare_title = f"{title} ({run_id[:6]})", f"{report.compare_title} ({compare[:6]})"
        report.partner, report.correlation, report.match = partner, corr, match
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="focusml-filters-"))
    report.out_dir = write_report(report, sp, Path(out_dir), figures=figures, top=top)
    if log:
        report.artifact_path = "filters" if not compare else f"filters/compare_{compare}"
        tracking.log_artifacts_to(run_id, report.out_dir, report.artifact_path)
    return report
