"""Where things are: the finished stages of a local run, and the stage folders of a Hub repo.

The local layout (``stages/NN-<task>/`` with ``record.json`` written last) is defined once, in
`slice_trl.trainer.stages`; this module only adds the Hub side: stage k is published as the folder
``stage-NN-<task>/`` holding PEFT's ``adapter_config.json`` + ``adapter_model.safetensors`` (the
converted adapter) and the stage's ``record.json``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from slice_trl.trainer import stages as layout

REMOTE_PREFIX = "stage-"
PUSHED_MARKER = "pushed.json"  # what this machine pushed where (informative: the Hub listing decides)
_REMOTE_STAGE_RE = re.compile(rf"^{REMOTE_PREFIX}(\d+)-([^/]+)$")


def remote_folder(number: int, task: str) -> str:
    """The Hub folder of stage ``number`` (1-indexed): ``stage-NN-<task>``."""
    return f"{REMOTE_PREFIX}{number:02d}-{layout.safe_name(task)}"


@dataclass(frozen=True)
class StageDir:
    """A finished stage folder ``stages/NN-<task>/`` (it has ``record.json``)."""

    number: int
    task: str
    path: Path

    @property
    def folder(self) -> str:
        """The stage's folder in the Hub repo: ``stage-NN-<task>``."""
        return remote_folder(self.number, self.task)


def finished_stages(output_dir: str | os.PathLike) -> list[StageDir]:
    """Finished stages of a run directory, in stage order (a stage is finished iff its
    ``record.json`` exists: the trainer writes it last)."""
    root = Path(output_dir) / layout.STAGES
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        parsed = layout.parse_stage_dirname(child.name)
        if child.is_dir() and parsed and layout.is_finished(child):
            found.append(StageDir(parsed[0], parsed[1], child))
    found.sort(key=lambda s: s.number)
    numbers = [s.number for s in found]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"{root} has two finished folders for the same stage number: {[s.path.name for s in found]}. "
                         "Delete the stale one.")
    return found


def stage_folders(paths: Iterable[str]) -> dict[int, str]:
    """{stage number: folder} for the ``stage-NN-<task>/`` folders of a repo listing that hold an adapter."""
    out: dict[int, str] = {}
    for path in paths:
        folder, _, name = path.partition("/")
        match = _REMOTE_STAGE_RE.match(folder)
        if match and name == layout.ADAPTER_CONFIG:
            out[int(match.group(1))] = folder
    return dict(sorted(out.items()))


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=True) + "\n").encode("utf-8")
