"""The run folder: every file and folder name of a continual run, on disk and on the Hub, in one
place (leaf module: pathlib, re, hashlib and the package's JSON reader/writer).

```
output_dir/ (RunFolder)          written by the trainer        model repo on the Hub
  run.json                       first: base model, tasks,      run.json (public copy), recipe.yaml
                                 seed, LoRA config, recipe
  results.json                   after every stage's record:    results.json
                                 R so far, AP/FP/forgetting
                                 (GP/IP)
  results_heatmap.png            with results.json              results_heatmap.png
  base/record.json               R_0 (evaluation.score_base)    base/record.json
  base/general.json              the base model's GP/IP         base/general.json
  stages/01-<task>/ (StageFolder)  one per stage, 1-indexed     stage-01-<task>/
    init_adapter/                the adapter right after
                                 initialisation (A0, B0)
    adapter/                     the trained A, B: applies to
                                 the base after absorption
    adapter_original_base/       converted (rank 2r): applies   adapter_config.json,
                                 to the base as it was          adapter_model.safetensors
    strategy_state.safetensors   a strategy's state
    record.json                  LAST: the stage is finished    record.json
                                 iff it exists; holds the
                                 sha256 of every file above
  pushed.json                    what this machine pushed where
  hub_pending/task_splits/       task splits whose push failed
                                                                README.md (the model card)
```

A downloaded Hub snapshot has the same run-level names, so ``RunFolder(snapshot)`` reads it too;
its stage folders are named by `hub_stage_folder`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from slice_trl.utils.jsonio import read_json, write_json_atomic

__all__ = ["RunFolder", "StageFolder", "hub_stage_folder", "published_stages", "safe_name", "sha256_file"]

HUB_STAGE_PREFIX = "stage-"
_LOCAL_STAGE_RE = re.compile(r"^(\d+)-(.+)$")
_HUB_STAGE_RE = re.compile(rf"^{HUB_STAGE_PREFIX}(\d+)-([^/]+)$")


def safe_name(task_name: str) -> str:
    """A task name as a folder name, locally and on the Hub: runs of other characters become '_',
    and no leading/trailing '.' or '_' (no hidden folders)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", task_name).strip("._") or "task"


def hub_stage_folder(number: int, task: str) -> str:
    """The Hub folder of stage ``number`` (1-indexed): ``stage-NN-<task>``."""
    return f"{HUB_STAGE_PREFIX}{number:02d}-{safe_name(task)}"


def published_stages(paths: Iterable[str]) -> dict[int, str]:
    """{stage number: folder} for the ``stage-NN-<task>/`` folders of a repo listing that hold an adapter."""
    out: dict[int, str] = {}
    for path in paths:
        folder, _, name = path.partition("/")
        match = _HUB_STAGE_RE.match(folder)
        if match and name == StageFolder.ADAPTER_CONFIG:
            out[int(match.group(1))] = folder
    return dict(sorted(out.items()))


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class StageFolder:
    """Stage ``number`` (1-indexed) of a run: ``stages/NN-<task>/`` (``task`` as a folder name)."""

    number: int
    task: str
    path: Path

    INIT, RAW, CONVERTED = "init_adapter", "adapter", "adapter_original_base"
    RECORD = "record.json"
    FILES_SHA256 = "files_sha256"  # the record's key: {file of the stage folder: sha256 of its bytes}
    STRATEGY_STATE = "strategy_state.safetensors"
    # PEFT's file names inside each adapter folder
    ADAPTER_CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"

    @property
    def init(self) -> Path:
        """The adapter right after initialisation (A0, B0), PEFT format."""
        return self.path / self.INIT

    @property
    def raw(self) -> Path:
        """The trained adapter (A, B): applies to the base after A0 B0 were absorbed."""
        return self.path / self.RAW

    @property
    def converted(self) -> Path:
        """The adapter for the base as it stood before the stage (what is published)."""
        return self.path / self.CONVERTED

    @property
    def record(self) -> Path:
        return self.path / self.RECORD

    @property
    def strategy_state(self) -> Path:
        return self.path / self.STRATEGY_STATE

    @property
    def finished(self) -> bool:
        """The trainer writes the record last: a stage is finished iff it exists."""
        return self.record.is_file()

    def read_record(self) -> dict:
        return read_json(self.record)

    def write_record(self, record: dict) -> None:
        """Atomically: a reader sees no record or the whole one. Written last, once every other file
        of the stage is: ``record[FILES_SHA256]`` is set (in place, so the caller's copy equals the
        one on disk) to the hashes of those files, which `changed_files` checks on resume."""
        record[self.FILES_SHA256] = self.files_sha256()
        write_json_atomic(self.record, record)

    def _files(self) -> list[Path]:
        return sorted(p for p in self.path.rglob("*") if p.is_file() and p != self.record)

    def files_sha256(self) -> dict[str, str]:
        """{path relative to the stage folder (posix): sha256 of its bytes} of every file but the record."""
        return {f.relative_to(self.path).as_posix(): sha256_file(f) for f in self._files()}

    def changed_files(self, record: dict) -> list[str]:
        """Why each file named in ``record[FILES_SHA256]`` no longer holds what the stage wrote
        (``"adapter/adapter_model.safetensors changed since it was written"`` or ``"... is missing"``);
        [] when all match, or for a record written before the hashes were kept."""
        out = []
        for name, digest in sorted((record.get(self.FILES_SHA256) or {}).items()):
            file = self.path / name
            if not file.is_file():
                out.append(f"{name} is missing")
            elif sha256_file(file) != digest:
                out.append(f"{name} changed since it was written (its sha256 is not the one in {self.RECORD})")
        return out

    @property
    def hub_folder(self) -> str:
        """The stage's folder in the Hub repo: ``stage-NN-<task>``."""
        return hub_stage_folder(self.number, self.task)

    def hub_path(self, name: str) -> str:
        """``name`` (a file of the published stage) as a path in the Hub repo."""
        return f"{self.hub_folder}/{name}"


class RunFolder:
    """A run's ``output_dir`` (or a downloaded snapshot of its Hub repo): where each file is."""

    RUN, RESULTS, HEATMAP = "run.json", "results.json", "results_heatmap.png"
    RECIPE, CARD = "recipe.yaml", "README.md"  # published only (the recipe is kept inside run.json)
    BASE, BASE_GENERAL = "base", "general.json"
    STAGES = "stages"
    PUSHED = "pushed.json"  # what this machine pushed where (informative: the Hub listing decides)
    PENDING_SPLITS, SPLITS_INDEX = Path("hub_pending") / "task_splits", "tasks.json"
    BASE_JSON = f"{BASE}/*.json"  # the base model's scores (a glob, as downloads take it)

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def owned(self, name: str) -> bool:
        """Whether a top-level entry ``name`` of root is one slice-trl writes (see the module's tree)."""
        if name.startswith(".") and name.endswith(".tmp"):  # a JSON write cut short: .<name>.<random>.tmp
            name = name[1:-len(".tmp")].rsplit(".", 1)[0]
        return name in (self.RUN, self.RESULTS, self.HEATMAP, self.BASE, self.STAGES, self.PUSHED,
                        self.PENDING_SPLITS.parts[0])

    def foreign_entries(self) -> list[str]:
        """The top-level entries of root that slice-trl did not write (sorted names; [] when root is absent)."""
        return sorted(p.name for p in self.root.iterdir() if not self.owned(p.name)) if self.root.is_dir() else []

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # ------------------------------------------------------------------ run-level files
    @property
    def run_file(self) -> Path:
        return self.root / self.RUN

    @property
    def results_file(self) -> Path:
        return self.root / self.RESULTS

    @property
    def heatmap(self) -> Path:
        return self.root / self.HEATMAP

    @property
    def base_dir(self) -> Path:
        """The base model's scores, measured once before stage 1."""
        return self.root / self.BASE

    @property
    def base_record(self) -> Path:
        """R_0 of the base model (``evaluation.score_base``)."""
        return self.base_dir / StageFolder.RECORD

    @property
    def base_general(self) -> Path:
        """GP/IP of the base model."""
        return self.base_dir / self.BASE_GENERAL

    @property
    def pushed(self) -> Path:
        return self.root / self.PUSHED

    @property
    def pending_splits(self) -> Path:
        return self.root / self.PENDING_SPLITS

    def read_run(self) -> dict | None:
        """run.json, or None when the run has none (yet)."""
        return read_json(self.run_file) if self.run_file.is_file() else None

    def read_results(self) -> dict | None:
        """results.json, or None when no stage finished yet."""
        return read_json(self.results_file) if self.results_file.is_file() else None

    def write_run(self, info: dict) -> None:
        write_json_atomic(self.run_file, info)

    def write_results(self, payload: dict) -> None:
        write_json_atomic(self.results_file, payload)

    def hub_path(self, path: Path) -> str:
        """A run-level file of this folder (run.json, results.json, the heatmap, ``base/...``) as a
        path in the Hub repo: the same relative path."""
        return Path(path).relative_to(self.root).as_posix()

    # ------------------------------------------------------------------ stages
    @property
    def stages_dir(self) -> Path:
        return self.root / self.STAGES

    def stage(self, t: int, task_name: str) -> StageFolder:
        """Stage ``t`` (0-indexed, as in code) of task ``task_name``: ``stages/{t+1:02d}-<task>/``."""
        task = safe_name(task_name)
        return StageFolder(t + 1, task, self.stages_dir / f"{t + 1:02d}-{task}")

    def finished_stages(self) -> list[StageFolder]:
        """The finished stage folders, in stage order (whatever tasks they are of)."""
        if not self.stages_dir.is_dir():
            return []
        found = []
        for child in self.stages_dir.iterdir():
            number = self.stage_number(child.name)
            stage = StageFolder(number, _LOCAL_STAGE_RE.match(child.name).group(2), child) if number is not None else None
            if child.is_dir() and stage is not None and stage.finished:
                found.append(stage)
        found.sort(key=lambda s: s.number)
        numbers = [s.number for s in found]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"{self.stages_dir} has two finished folders for the same stage number: "
                             f"{[s.path.name for s in found]}. Delete the stale one.")
        return found

    @staticmethod
    def stage_number(folder: str) -> int | None:
        """The stage number of a local stage folder name (``NN-<task>``), None for any other name."""
        match = _LOCAL_STAGE_RE.match(folder)
        return int(match.group(1)) if match else None

    def stage_records(self) -> list[Path]:
        """The record of every finished stage, in folder-name order."""
        return sorted(self.stages_dir.glob(f"*/{StageFolder.RECORD}"))

    @staticmethod
    def hub_record(folder: str) -> str:
        """The record of the published stage folder ``folder``, as a path in the Hub repo."""
        return f"{folder}/{StageFolder.RECORD}"

