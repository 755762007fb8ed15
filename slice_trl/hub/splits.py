"""The prepared task splits of a run, published to a dataset repo (one configuration per task).

A failed split push must not cost the run, and must not be forgotten: `save_pending_splits` keeps
the prepared splits in the run folder (`RunFolder.pending_splits`) and every later push of the run
(`push.push_pending`: after each stage, and ``--push-only``) retries them first; the folder is
removed once they are on the Hub. The model card names the dataset repo only when nothing is
pending, so it never points at a dataset that is not there.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from slice_trl.utils.jsonio import read_json, write_json_atomic
from slice_trl.utils.run_folder import RunFolder
from slice_trl.hub.card import DATASET_CARD_TEMPLATE, DATASET_TAGS, template_text
from slice_trl.hub.redaction import known_secrets, public, scrub

logger = logging.getLogger(__name__)


def _task_notes(info: dict) -> str:
    items = [f"{k}: {v}" for k, v in (info or {}).items() if isinstance(v, (int, float, str, bool)) and v != ""]
    text = "; ".join(items).replace("|", "/").replace("\n", " ")
    return text[:120] + ("…" if len(text) > 120 else "") if text else ""


def push_task_splits(
    tasks,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    *,
    template_path: str | os.PathLike | None = None,
) -> str:
    """Publish each task's prepared ``train`` / ``eval`` splits to the DATASET repo ``repo_id``, one
    configuration per task (named after the task), then a dataset card listing them in order.
    ``tasks`` are `slice_trl.tasks.base.Task` objects. Returns the repo id. Unchanged data makes no
    new commit (``datasets`` and huggingface_hub skip identical files)."""
    from datasets import DatasetDict
    from huggingface_hub import DatasetCard, HfApi

    tasks = list(tasks)
    if not tasks:
        raise ValueError("push_task_splits needs at least one task.")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"Task names must be unique (they become dataset configs): {names}.")
    for name in names:
        if name == "data" or not re.fullmatch(r"[\w.-]+", name):
            raise ValueError(f"Task name {name!r} cannot be a dataset config name (letters, digits, _ . -; not 'data').")
    secrets = known_secrets(token)
    api = HfApi(token=token, library_name="slice-trl")
    repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id or repo_id
    rows = []
    for task in tasks:
        DatasetDict({"train": task.train, "eval": task.eval}).push_to_hub(
            repo_id, config_name=task.name, private=private, token=token, revision=revision,
            commit_message=f"Task {task.name}: train/eval splits",
        )
        first = task.train[0] if len(task.train) else {}
        rows.append({
            "name": task.name, "n_train": len(task.train), "n_eval": len(task.eval), "metric": task.metric,
            "format": "conversational" if isinstance(first.get("prompt"), list) else "prompt/completion",
            "notes": scrub(_task_notes(public(task.info, secrets)), secrets),
        })
    readme = api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision)
    data = DatasetCard.load(readme).data  # keeps the configs / dataset_info that datasets wrote
    data.tags = sorted(set(data.get("tags") or []) | set(DATASET_TAGS))  # no `tags` attribute until set
    data.task_categories = data.task_categories or ["text-generation"]
    data.pretty_name = data.pretty_name or f"{repo_id.split('/')[-1]} task splits"
    card = DatasetCard.from_template(
        data, template_str=template_text(DATASET_CARD_TEMPLATE, template_path),
        title=f"{repo_id.split('/')[-1]}: task splits of a continual run", tasks=rows, repo_id=repo_id,
    )
    DatasetCard(scrub(str(card), secrets)).push_to_hub(
        repo_id, repo_type="dataset", token=token, revision=revision, commit_message="Dataset card: task splits")
    return repo_id


def save_pending_splits(tasks, output_dir: str | os.PathLike, reason: str) -> Path:
    """Keep the prepared splits of ``tasks`` (and why their push failed) in the run folder, for
    the next push to retry. Returns the folder."""
    from datasets import DatasetDict

    folder = RunFolder(output_dir).pending_splits
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    order = []
    for i, task in enumerate(tasks):
        sub = f"{i + 1:02d}"
        DatasetDict({"train": task.train, "eval": task.eval}).save_to_disk(str(folder / sub))
        order.append({"folder": sub, "name": task.name, "metric": task.metric, "info": task.info})
    write_json_atomic(folder / RunFolder.SPLITS_INDEX, {"reason": reason, "tasks": order})
    return folder


def pending_splits(output_dir: str | os.PathLike) -> Path | None:
    """The folder of splits still to push, or None."""
    folder = RunFolder(output_dir).pending_splits
    return folder if (folder / RunFolder.SPLITS_INDEX).is_file() else None


def push_pending_splits(output_dir: str | os.PathLike, repo_id: str, private: bool = False,
                        token: str | None = None) -> str | None:
    """Push the splits `save_pending_splits` kept, then remove them. Returns the dataset repo id,
    or None when nothing was pending. Raises when the push fails (the splits stay)."""
    from datasets import load_from_disk

    from slice_trl.tasks.base import Task

    folder = pending_splits(output_dir)
    if folder is None:
        return None
    saved = read_json(folder / RunFolder.SPLITS_INDEX)["tasks"]
    tasks = []
    for entry in saved:
        splits = load_from_disk(str(folder / entry["folder"]))
        tasks.append(Task(entry["name"], splits["train"], splits["eval"], entry["metric"], entry.get("info") or {}))
    repo_id = push_task_splits(tasks, repo_id, private=private, token=token)
    shutil.rmtree(folder)
    parent = folder.parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
    return repo_id
