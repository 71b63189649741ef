"""`focusml discover RUN_ID`: a trained run's shortcut proposals as a tracked run and a proposals file.

The run's model (weights only) and dataset are rebuilt from the run, `focusml.core.discover.propose`
groups the images of `train` and `val` by where the model's evidence sits, and a new run in the
source's experiment (tagged `focusml.kind = discover`, `focusml.discover_of = RUN_ID`) logs the
proposals: a table (rank, scope, region size, flip rate, members), one figure per proposal
(`discover/pNN.png`: members with the region outlined) and the proposals file itself
(`discover/proposals.json`, the format of `focusml.core.proposals`). The file is also written
where the mask tool reads it: `DATA_ROOT/proposals/<RUN_ID>.json` for a folder dataset, else `out`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import torch

from focusml import FocusmlError
from focusml.core.data.folder import row_paths
from focusml.core.discover import Proposal, pixel_masks, propose
from focusml.core.figures import proposal_grid
from focusml.core.models import load_init_state
from focusml.core.proposals import FORMAT, cells_to_text
from focusml.tracking.log import log_figure, log_metrics, log_params, log_table, set_tags
from focusml.tracking.runs import load_run_data, load_run_model, run_info
from focusml.tracking.sources import resolve as resolve_source
from focusml.tracking.store import start_run

SHOWN = 24  # members drawn per proposal figure


@dataclass
class Discovery:
    run_id: str  # the discovering run
    source: str  # the run whose model was read
    proposals: list[Proposal]
    document: dict
    path: Path | None  # where the proposals file was written


def document(source: str, proposals: list[Proposal], data, splits: tuple[str, ...]) -> dict:
    """The proposals file (`focusml.core.proposals`' format): members by their path under images/."""
    paths = {s: row_paths(data, s) for s in splits if s in data.splits}
    grid = list(proposals[0].region.shape) if proposals else []
    return {"format": FORMAT, "run_id": source, "grid": grid, "classes": list(data.classes),
            "proposals": [{"id": q.id, "rank": q.rank, "scope": q.scope, "region": cells_to_text(q.region),
                           "size": round(q.size, 4), "flip_rate": round(q.flip_rate, 4),
                           "members": [{"path": paths[s][i], "cells": cells_to_text(c)}
                                       for (s, i), c in zip(q.members, q.cells)]} for q in proposals]}


def default_path(data, source: str, out: str | os.PathLike | None) -> Path:
    """`out`, else DATA_ROOT/proposals/<run>.json for a folder dataset, else ./proposals-<run>.json."""
    if out is not None:
        return Path(out)
    if data.name == "folder":
        return Path(data.params["root"]) / "proposals" / f"{source}.json"
    return Path(f"proposals-{source}.json")


def _write(doc: dict, path: Path) -> None:
    """Atomically: a temporary file beside it, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as a plain open() would create it (mkstemp's is owner-only)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def figure(q: Proposal, data):
    """The proposal's first `SHOWN` members with their masks outlined."""
    rows = q.members[:SHOWN]
    images = torch.stack([data.split(s).images[i] for s, i in rows])
    labels = [int(data.split(s).labels[i]) for s, i in rows]
    masks = pixel_masks(q.cells[:SHOWN], tuple(images.shape[-2:]))
    title = (f"{q.id}: {q.scope}, {len(q.members)} images, region {100 * q.size:.0f}% of the image, "
             f"flip rate {q.flip_rate:.2f}")
    return proposal_grid(images, masks, labels, data.classes, title)


def discover(source: str, *, splits: tuple[str, ...] = ("train", "val"), seed: int = 0,
             out: str | os.PathLike | None = None, experiment: str | None = None, data=None,
             model: torch.nn.Module | None = None) -> Discovery:
    """Proposals from run `source`'s model on its own data, logged as a new run; see the module docstring.

    `data`, `model`: your own dataset and network (the architecture the run trained; its weights are loaded
    from the run, weights only), as for `refine`.
    """
    info = run_info(source)
    source, params = info.info.run_id, dict(info.data.params)
    data = data if data is not None else load_run_data(params)
    bad = [s for s in splits if s not in data.splits]
    if bad:
        raise FocusmlError(f"--splits: the run's dataset has no split {bad[0]!r} (has: {', '.join(data.splits)}).")
    image_size = int(params["image_size"]) if params.get("image_size") not in (None, "", "None") else None
    if model is None:
        model = load_run_model(source, image_size=image_size)
    else:
        # as a refine stage loads it: another architecture is refused naming both, not a load_state_dict traceback
        load_init_state(model, resolve_source(source).weights, params.get("model") or "", max(data.image_shape[1:]))
        model = model.cpu().eval()
    path = default_path(data, source, out)
    exp = experiment or mlflow.MlflowClient().get_experiment(info.info.experiment_id).name
    tags = {"focusml.kind": "discover", "focusml.discover_of": source}
    with start_run(exp, f"discover-{params.get('method', 'run')}-{params.get('dataset', '')}", tags=tags) as active:
        proposals = propose(model, data, splits, seed)
        doc = document(source, proposals, data, splits)
        log_params({"source_run": source, "splits": ",".join(splits), "seed": seed, "dataset": params.get("dataset"),
                    "data_root": params.get("data_root"), "proposals_file": str(path)})
        log_metrics({"proposals": len(proposals), "images": sum(len(data.split(s)) for s in splits)}, step=0)
        log_table(pd.DataFrame([{"id": q.id, "rank": q.rank, "scope": q.scope, "size": round(q.size, 4),
                    "flip_rate": round(q.flip_rate, 4), "members": len(q.members)} for q in proposals]),
                  "discover/proposals_table.json")
        for q in proposals:
            log_figure(figure(q, data), f"discover/{q.id}.png")
        mlflow.log_dict(doc, "discover/proposals.json")
        _write(doc, path)
        set_tags({"focusml.proposals_file": str(path)})
        return Discovery(active.info.run_id, source, proposals, doc, path)
