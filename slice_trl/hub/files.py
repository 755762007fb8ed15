"""The files of a run as they are published: public copies of the local ones.

Every published JSON/YAML file is a public copy (`secrets.public`: no credentials, no absolute
paths of this machine); adapter configs name the base model by its Hub id (PEFT wrote whatever
path the model was loaded from, e.g. a local cache folder); LoRA target modules are a sorted list.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slice_trl.utils.jsonio import json_bytes, read_json
from slice_trl.utils.run_folder import RunFolder, StageFolder
from slice_trl.hub.convert import published_adapter_dir
from slice_trl.hub.redaction import LOCAL, public

_REPO_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class BaseModel:
    """The base model of a run as published: ``name`` (what the run was given: a Hub id, the
    bundled alias, or ``<local path>/<folder>``), its Hub id when there is one, the licence when
    known, and the bundled GGUF file when the run used those dequantised weights."""

    name: str | None
    hub_id: str | None
    license: str | None = None
    gguf: str | None = None
    gguf_package: str | None = None


def base_model(run: dict) -> BaseModel:
    """`BaseModel` of a run's facts (`RunFolder.read_run`; local or public copy)."""
    from slice_trl.models.loading import EMBEDDED_MODEL, EMBEDDED_SOURCE

    name = run.get("base_model")
    if not isinstance(name, str) or not name:
        return BaseModel(None, None)
    if name == EMBEDDED_MODEL:
        return BaseModel(name, EMBEDDED_SOURCE["hub_id"], EMBEDDED_SOURCE["license"], EMBEDDED_SOURCE["gguf"],
                         EMBEDDED_SOURCE["package"])
    if name.startswith((".", "/", "~", LOCAL)) or Path(name).exists() or not _REPO_ID_RE.fullmatch(name):
        return BaseModel(public(name, []), None)
    return BaseModel(name, name)


def sorted_modules(value: Any) -> Any:
    """LoRA ``target_modules`` as a sorted list (the run's facts may hold PEFT's set as its str())."""
    if isinstance(value, str) and value[:1] in "{[(":
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    if isinstance(value, (set, frozenset, list, tuple)):
        return sorted(str(v) for v in value)
    return value  # a regex string, or None


def read_run(folder: RunFolder) -> dict:
    """The run's facts as the trainer wrote them; raises when they are missing or not an object."""
    run = folder.read_run()
    if run is None:
        raise FileNotFoundError(f"{folder.run_file} is missing: the trainer writes it when the run starts.")
    if not isinstance(run, dict):
        raise ValueError(f"{folder.run_file} must hold a JSON object.")
    return run


def public_run(run: dict, secrets: list[str]) -> dict:
    """The run's facts (`read_run`) as published: redacted, path-free, target modules sorted, the
    base model's Hub id."""
    base = base_model(run)
    run = public(run, secrets)
    run["base_model"] = base.name
    run["base_model_hub_id"] = base.hub_id
    if isinstance(run.get("lora"), dict) and "target_modules" in run["lora"]:
        run["lora"]["target_modules"] = sorted_modules(run["lora"]["target_modules"])
    return run


def stage_files(stage: StageFolder, secrets: list[str], base: BaseModel) -> dict[str, bytes | Path]:
    """{path in repo: content} of one stage: the converted adapter and the stage's record."""
    adapter = published_adapter_dir(stage)
    config = read_json(adapter / stage.ADAPTER_CONFIG)
    config["base_model_name_or_path"] = base.hub_id  # PEFT wrote the local path the model came from
    if "target_modules" in config:
        config["target_modules"] = sorted_modules(config["target_modules"])
    return {
        stage.hub_path(stage.ADAPTER_CONFIG): json_bytes(public(config, secrets)),
        stage.hub_path(stage.WEIGHTS): adapter / stage.WEIGHTS,
        stage.hub_path(stage.RECORD): json_bytes(public(stage.read_record(), secrets)),
    }


def run_files(folder: RunFolder, run: dict, results: dict | None, secrets: list[str],
              card: str) -> dict[str, bytes | Path]:
    """{path in repo: content} of the run-level files: the run's facts (``run``: `public_run`), the
    recipe, the results (``results``: `RunFolder.read_results`), the heatmap, the base model's
    scores (when the run has them) and the README card."""
    import yaml

    files: dict[str, bytes | Path] = {folder.hub_path(folder.run_file): json_bytes(run)}
    if run.get("recipe") is not None:
        files[folder.RECIPE] = yaml.safe_dump(run["recipe"], sort_keys=False, allow_unicode=True).encode("utf-8")
    if results is not None:
        files[folder.hub_path(folder.results_file)] = json_bytes(public(results, secrets))
    if folder.heatmap.is_file():
        files[folder.hub_path(folder.heatmap)] = folder.heatmap
    if folder.base_dir.is_dir():
        for path in sorted(folder.base_dir.rglob("*.json")):
            files[folder.hub_path(path)] = json_bytes(public(read_json(path), secrets))
    files[folder.CARD] = card.encode("utf-8")
    return files
