"""Runs launched by tests/test_tracking.py in a process of their own, so that trackio's local store
(read from ``TRACKIO_DIR`` once, when trackio is imported) is the test's folder, never ~/.cache.

``tracking_worker.py ROOT``
    ``ROOT/full``: a tiny 3-task SLICE run (base row scored) with ``report_to: [tensorboard, trackio]``;
    ``ROOT/resumed``: the same run killed in stage 2 (after 2 of its optimiser steps), then rerun in
    the same output_dir (resumes). After each, trackio's own reader dumps every logged row of the
    project to ``ROOT/<name>.trackio.json`` ({run name: [row, ...]}, a row = one ``log`` call).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, os.path.dirname(__file__))

from test_trainer import Crash, build  # noqa: E402

REPORT_TO = ["tensorboard", "trackio"]
EVALUATION = {"max_samples": 6, "batch_size": 3, "max_new_tokens": 6, "score_base": True}


def dump_trackio(project: str, path: Path) -> None:
    from trackio.sqlite_storage import SQLiteStorage

    rows = {run: [{k: v for k, v in row.items() if k != "timestamp"} for row in SQLiteStorage.get_logs(project, run)]
            for run in SQLiteStorage.get_runs(project)}
    path.write_text(json.dumps(rows, default=str))


def main(root: Path) -> None:
    build(root / "full", project="full", report_to=REPORT_TO, evaluation=EVALUATION).train()
    dump_trackio("full", root / "full.trackio.json")

    holder = [None]
    crashing = build(root / "resumed", callbacks=[Crash(holder)], project="resumed", report_to=REPORT_TO,
                     evaluation=EVALUATION)
    holder[0] = crashing
    try:
        crashing.train()
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the run was not killed in stage 2")
    build(root / "resumed", project="resumed", report_to=REPORT_TO, evaluation=EVALUATION).train()
    dump_trackio("resumed", root / "resumed.trackio.json")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
