"""Run integrity: the fingerprint of everything that determines a run's results, and the
output_dir rules built on it.

The run's facts (`RunFolder.run_file`) hold ``fingerprint``, a nested mapping:

- ``base_model``: ``id`` (Hub id or path as given), ``revision``, and for a local checkpoint
  ``files_sha256`` (a content hash of the checkpoint's files, cached by path, size and mtime);
- ``lora``: the `peft.LoraConfig`;
- ``model``: every field of TRL's `ModelConfig` (``dtype``, ``attn_implementation``, quantisation, ...)
  less `IGNORED_MODEL_KEYS` (`model_fingerprint`); absent when the trainer is used without a recipe;
- ``training``: every field of `ContinualSFTConfig` (TRL's SFTConfig, transformers'
  TrainingArguments and the nested ``init``/``replay``/``evaluation``/``strategy`` configs),
  taken generically from ``to_dict()`` so that a field added later is covered without an edit,
  less `IGNORED_KEYS`, the keys that cannot change the results;
- ``tasks``: per task its name, source, metric, split sizes and a sha256 of its prepared
  train and eval records (after splitting and length fitting).

On a rerun in the same output_dir (`check_output_dir`): an equal fingerprint resumes, any
difference stops with one message listing each differing key as ``old -> new`` -- unless no stage
finished there yet (a failure before stage 1 trained): then nothing can mix and the rerun starts
afresh (`discard_unfinished`). Starting over (`move_aside`) moves the whole previous content of
output_dir into a sibling ``<output_dir>.replaced-<UTC timestamp>/`` before anything new is
written, and only when output_dir holds a slice-trl run (`foreign_entries`): never a folder of
other files (a mistyped ``--output_dir ~``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from slice_trl.utils.jsonio import read_json, write_json_atomic
from slice_trl.utils.run_folder import RunFolder, sha256_file

FINGERPRINT = "fingerprint"

# Keys of the training (and LoRA) config that cannot change a run's results (adapters, R, GP/IP): where it
# writes, how it logs or reports, publishing, resuming, data-loader worker processes, debug aids.
# Everything else (including any field added later) is part of the fingerprint.
IGNORED_KEYS = frozenset({
    "peft_version",  # LoraConfig records the installed PEFT; the settings themselves are compared
    "output_dir", "resume", "resume_from_checkpoint", "overwrite_output_dir",
    "logging_dir", "logging_steps", "logging_strategy", "logging_first_step", "logging_nan_inf_filter",
    "log_level", "log_level_replica", "log_on_each_node", "disable_tqdm", "report_to", "run_name", "project",
    "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id", "skip_memory_metrics",
    "include_num_input_tokens_seen",
    "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push",
    "hub_revision",
    "save_strategy", "save_steps", "save_total_limit", "save_only_model", "save_on_each_node",
    "restore_callback_states_from_checkpoint",
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "dataset_num_proc",
    "local_rank", "ddp_timeout", "torch_empty_cache_steps",
    "ddp_find_unused_parameters",  # only whether DDP searches the graph for unused parameters
})

# Fields of TRL's ModelConfig left out of the ``model`` section, each because another part of the
# fingerprint already covers it or because the run always sets it:
IGNORED_MODEL_KEYS = frozenset({
    "model_name_or_path",  # base_model.id, and base_model.files_sha256 (the checkpoint's content)
    "use_peft",  # always True: the recipe sets it (every stage trains a LoRA adapter)
    # the LoRA settings: the `lora` section holds the `peft.LoraConfig` built from them
    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
    "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora",
})

# Fields of earlier versions that were removed without ever changing a result: left out of a stored
# fingerprint when it is compared, so a run made before their removal still resumes.
RETIRED_KEYS = frozenset({"merge_after_task"})  # never read: every stage merged into the base
# Keys renamed without changing a result: a stored fingerprint's old key is compared as the new one.
RENAMED_KEYS = {"init.gradient_checkpointing": "init.activation_checkpointing"}  # transformers 5's name
# Keys added later, with their defaults: a run recorded before they existed ran with the default.
ADDED_KEYS = {"evaluation.every": 1, "evaluation.score_upcoming": False}


def _model_defaults() -> dict:
    """ModelConfig's defaults of the fingerprinted model keys (`ADDED_KEYS` of the ``model`` section):
    a run recorded before that section existed ran with these unless its stored recipe says
    otherwise (`_stored_model_settings`)."""
    from dataclasses import MISSING, fields

    from trl import ModelConfig

    return {f.name: _jsonable(f.default) for f in fields(ModelConfig)
            if f.name not in IGNORED_MODEL_KEYS and f.default is not MISSING}


class RunMismatchError(ValueError):
    """output_dir holds a run whose fingerprint differs from this one's."""


# ------------------------------------------------------------------------------ the fingerprint
def _jsonable(value):
    """JSON-safe, order-stable copy: sets are sorted (PEFT stores target_modules as a set, whose
    order changes between processes), enums and other objects become strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(getattr(value, "value", value))


def training_fingerprint(args) -> dict:
    """``args.to_dict()`` (a `ContinualSFTConfig`, nested configs as mappings) less `IGNORED_KEYS`."""
    return _jsonable({k: v for k, v in args.to_dict().items() if k not in IGNORED_KEYS})


def model_fingerprint(model_args) -> dict:
    """Every field of a `trl.ModelConfig` (``dtype``, ``attn_implementation``, ``model_revision``,
    quantisation, and any field TRL adds later) less `IGNORED_MODEL_KEYS`."""
    from dataclasses import fields

    return _jsonable({f.name: getattr(model_args, f.name) for f in fields(model_args)
                      if f.name not in IGNORED_MODEL_KEYS})


def lora_fingerprint(lora_config) -> dict:
    return _jsonable({k: v for k, v in lora_config.to_dict().items() if k not in IGNORED_KEYS})


def _records_sha256(ds) -> str:
    h = hashlib.sha256()
    for row in ds:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def task_fingerprint(task) -> dict:
    """name, source, metric, split sizes and a sha256 of the prepared train and eval records."""
    h = hashlib.sha256()
    for split in (task.train, task.eval):
        h.update(_records_sha256(split).encode())
    return {"name": task.name, "source": task.info.get("source"), "metric": task.metric,
            "n_train": len(task.train), "n_eval": len(task.eval), "sha256": h.hexdigest()}


def _hash_cache_path() -> Path:
    from slice_trl.models.loading import cache_dir

    return cache_dir() / "files_sha256.json"


def file_sha256(path: Path, cache: dict | None = None) -> str:
    """sha256 of a file's bytes; ``cache`` maps "path|size|mtime_ns" to known hashes (a
    checkpoint is hashed once, later runs only stat it)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if cache is not None and key in cache:
        return cache[key]
    digest = sha256_file(path)
    if cache is not None:
        cache[key] = digest
    return digest


def checkpoint_sha256(folder: Path) -> str:
    """One hash over every file of a local checkpoint directory (weights, config, tokenizer),
    names included; per-file hashes are cached in ``<slice_trl cache>/files_sha256.json``."""
    cache_file = _hash_cache_path()
    try:
        cache = read_json(cache_file)
    except (OSError, ValueError):
        cache = {}
    n_known = len(cache)
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.name}\0{file_sha256(f, cache)}\n".encode())
    if len(cache) != n_known:
        try:  # best effort: an unwritable cache only costs re-hashing next time
            write_json_atomic(cache_file, cache, indent=None)
        except OSError:
            pass
    return h.hexdigest()


def model_identity(name_or_path: str, revision: str | None = None) -> dict:
    """``{"id", "revision"}`` of the base model, plus ``files_sha256`` when it is a local
    checkpoint directory (the bundled alias resolves to its cached checkpoint when it exists;
    nothing is loaded or converted here)."""
    from slice_trl.models.loading import EMBEDDED_MODEL, cache_dir

    out = {"id": str(name_or_path), "revision": revision}
    folder = cache_dir() / EMBEDDED_MODEL if name_or_path == EMBEDDED_MODEL else Path(str(name_or_path))
    if folder.is_dir():
        out["files_sha256"] = checkpoint_sha256(folder)
    return out


def run_fingerprint(args, lora_config, base_model: dict, tasks=None, task_names=None, model_args=None) -> dict:
    """The whole fingerprint; ``tasks=None`` leaves the task data out (a dry run has no
    tokenizer, so no prepared data) and takes the names from ``task_names``; ``model_args`` (the
    recipe's `trl.ModelConfig`) adds the ``model`` section."""
    fp = {"base_model": _jsonable(base_model), "lora": lora_fingerprint(lora_config),
          **({"model": model_fingerprint(model_args)} if model_args is not None else {}),
          "training": training_fingerprint(args),
          "task_names": [t.name for t in tasks] if tasks is not None else list(task_names or [])}
    if tasks is not None:
        fp["tasks"] = [task_fingerprint(t) for t in tasks]
    return fp


_TOP_LEVEL = ("training", "model")  # sections whose keys a recipe gives at its top level


def flatten(fp: dict) -> dict:
    """Dotted keys as a user writes them: training and model fields are top level (``learning_rate``,
    ``init.method``, ``dtype``; the two classes share no field name), the rest keep their section
    (``lora.r``, ``tasks[1].sha256``)."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            out[prefix] = value

    for section, value in fp.items():
        walk("" if section in _TOP_LEVEL else section, value)
    return out


def differences(old: dict, new: dict, sections=None, skip=()) -> list[str]:
    """``key: old -> new`` for every key that differs (``sections``: compare only these
    top-level parts of the fingerprint; ``skip``: flattened keys left out)."""
    if sections is not None:
        old = {k: v for k, v in old.items() if k in sections}
        new = {k: v for k, v in new.items() if k in sections}
    a, b = flatten(old), flatten(new)
    a = {RENAMED_KEYS.get(k, k): v for k, v in a.items() if k not in RETIRED_KEYS}
    added = {**ADDED_KEYS, **(_model_defaults() if "model" in new else {})}
    missing = object()
    out = []
    for key in [k for k in list(a) + [k for k in b if k not in a] if k not in skip]:
        va, vb = a.get(key, added.get(key, missing)), b.get(key, missing)
        if va != vb:
            out.append(f"{key}: {'(unset)' if va is missing else repr(va)} -> {'(unset)' if vb is missing else repr(vb)}")
    return out


def _stored_model_settings(old: dict, info: dict) -> dict:
    """``old`` (a fingerprint recorded before the ``model`` section existed) with that section
    taken from the model keys of the recipe kept in the same run.json (the rest: `_model_defaults`)."""
    if "model" in old or not isinstance(info.get("recipe"), dict):
        return old
    recipe = info["recipe"]
    return {**old, "model": _jsonable({k: recipe[k] for k in _model_defaults() if k in recipe})}


# ------------------------------------------------------------------------------ output_dir rules
def read_run_info(output_dir) -> dict | None:
    """The run's facts in ``output_dir``: None when there are none, {} when they do not parse."""
    try:
        return RunFolder(output_dir).read_run()
    except ValueError:
        return {}


def _ways_out(output_dir, overwrite_hint: str) -> str:
    return (f"Use a new output_dir, or start over with {overwrite_hint} (moves the old run aside to "
            f"{Path(output_dir)}.replaced-<UTC time>/).")


def _not_a_run(out: Path, overwrite_hint: str) -> str | None:
    """Why ``out`` may not be moved aside, or None: it must hold a slice-trl run, i.e. a run.json with
    a fingerprint, or nothing but the files slice-trl writes (`RunFolder.foreign_entries`)."""
    foreign = RunFolder(out).foreign_entries()
    if not foreign or (read_run_info(out) or {}).get(FINGERPRINT) is not None:
        return None
    shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} entries)" if len(foreign) > 5 else "")
    return (f"output_dir {str(out)!r} holds files that are not a slice-trl run ({shown}); {overwrite_hint} moves "
            "aside only a slice-trl run, so nothing was moved. Choose another output_dir.")


def check_output_dir(output_dir, fingerprint: dict, resume: bool, overwrite_hint: str = "--overwrite",
                     sections=None, skip=()) -> str:
    """Decide what a run in ``output_dir`` does, writing nothing. Returns "new" (nothing there),
    "resume" (an equal fingerprint), "restart" (a run there finished no stage: nothing can mix, so
    `discard_unfinished` clears it whatever its settings) or "replace" (``resume`` is False and
    there is a slice-trl run to move aside). Raises `RunMismatchError` (one line) when a resume would
    mix two runs (naming every differing key ``old -> new``), or when ``resume`` is False and
    output_dir holds other files; ``sections`` and ``skip`` limit the comparison (see `differences`)."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise RunMismatchError(f"output_dir={str(out)!r} is a file, not a directory. Choose another output_dir.")
    if not out.is_dir() or not any(out.iterdir()):
        return "new"
    if not resume:
        why = _not_a_run(out, overwrite_hint)
        if why is not None:
            raise RunMismatchError(why)
        return "replace"
    info = read_run_info(out)
    old = (info or {}).get(FINGERPRINT)
    try:
        unfinished = not RunFolder(out).finished_stages()
    except ValueError:  # two finished folders of one stage: a finished run, named by check_finished
        unfinished = False
    if old is None:
        what = (f"holds files but no {RunFolder.RUN}" if info is None else
                f"holds a {RunFolder.RUN} without a fingerprint (a damaged run, or one from an older slice-trl)")
        if info is None and not RunFolder(out).stages_dir.exists():
            return "new"  # an unrelated, stage-free folder: the run writes beside its files
        if unfinished:
            return "restart"
        raise RunMismatchError(f"output_dir {str(out)!r} {what}: resuming could mix two runs. "
                               + _ways_out(out, overwrite_hint))
    diff = differences(_stored_model_settings(old, info), fingerprint, sections, skip)
    if diff and unfinished:
        return "restart"  # e.g. a failure before stage 1 trained, rerun with corrected settings
    if diff:
        shown = "; ".join(diff[:12]) + (f"; ... and {len(diff) - 12} more" if len(diff) > 12 else "")
        raise RunMismatchError(f"output_dir {str(out)!r} holds a run with other settings ({shown}); resuming "
                               "it would mix two runs. " + _ways_out(out, overwrite_hint))
    return "resume"


def discard_unfinished(output_dir) -> None:
    """Clear a run that finished no stage ("restart"): its run.json (settings and tracker run ids of
    the failed attempt), a results file and the partial stage folders. The base model's scores
    (``base/``, reused only when measured with the same settings), pushed.json, the pending task
    splits and anything slice-trl did not write stay."""
    run = RunFolder(output_dir)
    if run.finished_stages():
        raise RunMismatchError(f"output_dir {str(run.root)!r} holds finished stages: not discarded.")
    for f in (run.run_file, run.results_file, run.heatmap):
        f.unlink(missing_ok=True)
    if run.stages_dir.is_dir():
        for child in run.stages_dir.iterdir():
            if child.is_dir() and RunFolder.stage_number(child.name) is not None:
                shutil.rmtree(child)
        if not any(run.stages_dir.iterdir()):
            run.stages_dir.rmdir()


def move_aside(output_dir, overwrite_hint: str = "--overwrite") -> Path | None:
    """Move the whole content of ``output_dir`` (every file and folder, whoever wrote it) into a
    new sibling ``<output_dir>.replaced-<UTC timestamp>/``; the folder itself stays. Returns the
    sibling, or None when there was nothing to move. Raises `RunMismatchError`, moving nothing,
    when output_dir does not hold a slice-trl run (`check_output_dir`)."""
    out = Path(output_dir)
    if not out.is_dir():
        return None
    entries = sorted(out.iterdir())
    if not entries:
        return None
    why = _not_a_run(out, overwrite_hint)
    if why is not None:
        raise RunMismatchError(why)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = out.with_name(f"{out.name}.replaced-{stamp}")
    target.mkdir(parents=False, exist_ok=False)
    for entry in entries:
        shutil.move(str(entry), str(target / entry.name))
    return target


def state_sha256(model) -> str:
    """sha256 over a model's parameters and buffers (names, dtypes, shapes, bytes): identifies
    a model that has no checkpoint on disk."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().view(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
