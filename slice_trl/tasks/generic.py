"""Any prompt/completion or messages dataset, from the Hub or from local files.

Local files: ``.json`` (a JSON list of records, read with Python's json), ``.jsonl`` (one record
a line), ``.csv`` and ``.parquet``; ``path`` is one file, a directory (every such file in it,
sorted) or a glob pattern. Hub: ``dataset_id`` with an optional ``config`` and ``split``.

``fields`` maps the roles this loader needs to the dataset's column names:
- ``{"prompt": "question", "completion": "answer"}``: strings become a user turn and an
  assistant turn; a column already holding TRL conversational messages is used as is.
  ``"system": "<column>"`` adds a system turn from that column.
- ``{"messages": "conversations"}``: a chat (``{"role", "content"}`` or ShareGPT ``{"from",
  "value"}`` turns); the LAST assistant turn is the completion, the turns before it the prompt.
Without ``fields`` the columns ``messages``/``conversations`` or ``prompt`` + ``completion`` are
used when present. Rows without a completion are skipped and counted in ``info``.

The pool is split with the paper's protocol (`split_train_eval`).
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset

from slice_trl.utils.registry import task_sources
from slice_trl.configs.settings import reject_unknown_keys, suggest
from slice_trl.tasks.base import LoadOptions, Task, load_hub_dataset, make_task, read_json, split_train_eval
from slice_trl.tasks.spec import MissingDataError

FIELD_ROLES = ("prompt", "completion", "messages", "system")
FILE_FORMATS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "bot": "assistant", "model": "assistant"}

LOCAL_HINT = "Point the task at local files instead: path=<.json/.jsonl/.csv/.parquet file, directory or glob>."


def check_fields(fields: dict | None) -> None:
    """Validate a field mapping (roles and their combination); raises ValueError naming the fix."""
    if fields is None:
        return
    if not isinstance(fields, dict):
        raise ValueError(f"fields={fields!r} must be a mapping such as "
                         "{'prompt': 'question', 'completion': 'answer'}.")
    reject_unknown_keys(fields, FIELD_ROLES, "fields", noun="role")
    for key, col in fields.items():
        if not isinstance(col, str) or not col:
            raise ValueError(f"fields[{key!r}]={col!r} must be a column name (a non-empty string).")
    if "messages" in fields and ({"prompt", "completion"} & set(fields)):
        raise ValueError("fields: give either 'messages' or 'prompt' + 'completion', not both.")
    if "messages" not in fields and not {"prompt", "completion"} <= set(fields):
        raise ValueError("fields needs 'prompt' and 'completion' columns, or a 'messages' column "
                         "(e.g. {'prompt': 'question', 'completion': 'answer'}).")


def local_files(path: str | Path) -> list[Path]:
    """The data files named by ``path`` (file, directory or glob), all of one supported format."""
    p = Path(path)
    if p.is_file():
        found = [p]
    elif p.is_dir():
        found = sorted(f for f in p.iterdir() if f.suffix in FILE_FORMATS)
    else:
        anchor = Path(p.anchor or ".")
        pattern = str(p.relative_to(anchor)) if p.is_absolute() else str(p)
        found = sorted(f for f in anchor.glob(pattern) if f.is_file()) if any(ch in str(p) for ch in "*?[") else []
        if not found:
            raise FileNotFoundError(f"Data path {str(path)!r} does not exist (nor matches any file). {LOCAL_HINT}")
    if not found:
        raise FileNotFoundError(f"No .json/.jsonl/.csv/.parquet file in {str(path)!r}.")
    kinds = {f.suffix for f in found}
    if not kinds <= set(FILE_FORMATS):
        raise ValueError(f"Unsupported data file type(s) {sorted(kinds - set(FILE_FORMATS))} in {str(path)!r}; "
                         f"use {sorted(FILE_FORMATS)}.")
    if len(kinds) > 1:
        raise ValueError(f"{str(path)!r} mixes file types {sorted(kinds)}; give one type.")
    return found


def read_local(path: str | Path) -> list[dict]:
    """Records of the local files named by ``path``."""
    files = local_files(path)
    kind = FILE_FORMATS[files[0].suffix]
    if kind == "json":
        rows = []
        for f in files:
            data = read_json(f)
            if not isinstance(data, list):
                raise ValueError(f"{str(f)!r} must hold a JSON list of records (use .jsonl for one record a line).")
            rows.extend(data)
        return rows
    if kind == "jsonl":
        rows = []
        for f in files:
            rows.extend(read_json(f, lines=True))
        return rows
    import datasets  # csv/parquet through datasets' packaged builders (no network involved)

    return list(datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train"))


def _turn(msg) -> dict:
    if isinstance(msg, dict) and "role" in msg:
        return {"role": str(msg["role"]), "content": "" if msg.get("content") is None else str(msg["content"])}
    if isinstance(msg, dict) and "from" in msg:
        role = _SHAREGPT_ROLES.get(str(msg["from"]).lower(), str(msg["from"]))
        return {"role": role, "content": str(msg.get("value", ""))}
    raise ValueError(f"A chat turn must be {{'role', 'content'}} or {{'from', 'value'}}; got {msg!r}.")


def _as_text(value) -> str:
    return "" if value is None else str(value)


def to_conversation(row: dict, fields: dict) -> tuple[list[dict], list[dict]] | None:
    """``(prompt messages, [assistant message])`` of one row, or None if it has no completion."""
    if "messages" in fields:
        turns = [_turn(m) for m in (row[fields["messages"]] or [])]
        last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
        if last is None or last == 0 or not turns[last]["content"]:
            return None
        return turns[:last], [turns[last]]
    prompt, completion = row[fields["prompt"]], row[fields["completion"]]
    if isinstance(prompt, list):
        messages = [_turn(m) for m in prompt]
    else:
        messages = [{"role": "user", "content": _as_text(prompt)}]
    if isinstance(completion, list):
        turns = [_turn(m) for m in completion]
        answer = next((t for t in reversed(turns) if t["role"] == "assistant"), None)
        if answer is None:
            return None
        answer = answer["content"]
    else:
        answer = _as_text(completion)
    if not answer:
        return None
    if fields.get("system") and row.get(fields["system"]):
        messages = [{"role": "system", "content": _as_text(row[fields["system"]])}] + messages
    return messages, [{"role": "assistant", "content": answer}]


def conversation_parts(prompt: list[dict], completion: list[dict]):
    """``(pieces, render)`` for `fit_prompt`: the prompt turns' texts in shortening order (the
    last user turn first, then earlier turns latest first, the system turn last), and a render
    that puts shortened texts back into their turns; the completion is never touched."""
    order = [i for i in reversed(range(len(prompt))) if prompt[i]["role"] != "system"]
    order += [i for i in range(len(prompt)) if prompt[i]["role"] == "system"]

    def render(pieces):
        msgs = [dict(m) for m in prompt]
        for i, text in zip(order, pieces):
            msgs[i]["content"] = text
        return {"prompt": msgs, "completion": completion}

    return [prompt[i]["content"] for i in order], render


def _resolve_fields(fields: dict | None, columns: list[str], where: str) -> dict:
    if fields is None:
        for col in ("messages", "conversations"):
            if col in columns:
                return {"messages": col}
        if "prompt" in columns and "completion" in columns:
            return {"prompt": "prompt", "completion": "completion"}
        raise ValueError(
            f"{where} has columns {columns}: give fields=, e.g. {{'prompt': '<question column>', "
            "'completion': '<answer column>'}} or {'messages': '<chat column>'}."
        )
    check_fields(fields)
    for role, col in fields.items():
        if col not in columns:
            raise ValueError(f"fields[{role!r}]={col!r} is not a column of {where}.{suggest(col, columns)} "
                             f"Columns: {columns}.")
    return fields


def load_generic_task(name: str, path: str | Path | None = None, dataset_id: str | None = None,
                      options: LoadOptions | None = None, *, fields: dict | None = None, config: str | None = None,
                      **kwargs) -> Task:
    """Load a prompt/completion or messages dataset as a conversational `Task`.

    ``config`` is the Hub config; ``options`` and/or ``kwargs`` are `LoadOptions` fields
    (``max_eval=3, tokenizer=tok, ...``); ``metric`` defaults to "rougeL". Length fitting shortens
    the prompt's turns from the middle: the last user turn first, then earlier turns (latest
    first), the system turn last; the completion is never cut.
    """
    opts = LoadOptions.of(options, name=name, **kwargs)
    if (path is None) == (dataset_id is None):
        raise ValueError("Give exactly one of path= (local data files) or dataset_id= (Hub dataset).")
    check_fields(fields)
    if path is not None:
        rows = read_local(path)
        where = f"data at {str(path)!r}"
        info = {"source": "generic", "path": str(path)}
    else:
        split = opts.split or "train"
        rows = list(load_hub_dataset(dataset_id, LOCAL_HINT, name=config, split=split, revision=opts.revision))
        where = f"Hub dataset {dataset_id!r}"
        info = {"source": "generic", "dataset_id": dataset_id, "config": config, "split": split,
                "revision": opts.revision}
    columns = list(rows[0].keys()) if rows else []
    if not rows:
        raise ValueError(f"{where} holds no records.")
    fields = _resolve_fields(fields, columns, where)

    convs, skipped = [], 0
    for row in rows:
        conv = to_conversation(row, fields)
        if conv is None:
            skipped += 1
            continue
        # Stored as JSON so Arrow does not have to unify message schemas across rows.
        convs.append({"conv": json.dumps(conv)})
    if len(convs) < 2:
        raise ValueError(f"{where} has {len(convs)} usable record(s) with a completion; at least 2 are needed.")
    train_raw, eval_raw = split_train_eval(Dataset.from_list(convs), seed=opts.seed, max_eval=opts.max_eval)

    def to_parts(row):
        return conversation_parts(*json.loads(row["conv"]))

    info.update(fields=dict(fields), n_records=len(rows), skipped_no_completion=skipped, split_seed=opts.seed,
                max_eval=opts.max_eval)
    return make_task(opts.name, train_raw, eval_raw, to_parts, opts.metric or "rougeL", info, opts)


def load_hub_splits_task(dataset_id: str, task: str, options: LoadOptions | None = None, **kwargs) -> Task:
    """Load one task from a dataset repo of prepared splits pushed by this project.

    The repo has one config per task (named after it) with splits "train" and "eval" of
    prompt/completion records (conversational or strings): ``load_dataset(dataset_id,
    name=task)``. The split is used as pushed (it was made with the paper's protocol when the
    task was loaded); ``max_eval``/``max_train`` only cap it (``max_eval`` default: no cap), and
    ``seed``/``split`` are not used. Length fitting applies as for the
    other loaders (a no-op for rows pushed already fitted to the same budget). ``metric``
    defaults to the Super-NI rule (`superni.default_metric`), which gives "rougeL" to names
    it does not know; built-in task names get "exact_match".
    """
    from slice_trl.tasks.builtin import BUILTIN_TASKS
    from slice_trl.tasks.superni import default_metric

    opts = LoadOptions.of(options if options is not None else LoadOptions(max_eval=None), **kwargs)
    hint = ("Load the task from its original source instead (source: superni / trace / generic with a "
            "local path), or point HF_ENDPOINT at a reachable Hub.")
    loaded = load_hub_dataset(dataset_id, hint, name=task, revision=opts.revision)
    missing = [s for s in ("train", "eval") if s not in loaded]
    if missing:
        raise ValueError(f"Hub dataset {dataset_id!r} (config {task!r}) lacks split(s) {missing}; "
                         f"it has {list(loaded)}.")
    parts = {}
    for split in ("train", "eval"):
        ds = loaded[split]
        fields = _resolve_fields(None, ds.column_names, f"split {split!r} of {dataset_id!r}/{task!r}")
        parts[split] = [c for c in (to_conversation(r, fields) for r in ds) if c is not None]
    if opts.max_eval is not None:
        parts["eval"] = parts["eval"][:opts.max_eval]

    metric = opts.metric or ("exact_match" if task in BUILTIN_TASKS else default_metric(task))
    info = {"source": "hub_splits", "dataset_id": dataset_id, "task": task, "revision": opts.revision}
    return make_task(opts.name or task, parts["train"], parts["eval"], lambda conv: conversation_parts(*conv), metric,
                     info, opts)


def validate_spec(spec) -> None:
    """A recipe's generic entry (`TaskSpec`): one of path/dataset_id, valid ``fields``, and local
    files that exist."""
    spec.one_location("data files")
    try:
        check_fields(spec.fields)
    except ValueError as exc:
        raise spec.error(str(exc)) from None
    if spec.path is not None:
        spec.check_path_exists()
        try:
            local_files(spec.path)
        except FileNotFoundError as exc:
            raise MissingDataError(spec.error(f"path: {exc}").args[0]) from None
        except ValueError as exc:
            raise spec.error(f"path: {exc}") from None


@task_sources.register("generic", validate=validate_spec, fields=("fields",))
def load_spec(spec, options: LoadOptions) -> Task:
    """The task a validated generic `TaskSpec` names."""
    return load_generic_task(options.name, spec.path, spec.dataset_id, options, fields=spec.fields, config=spec.task)


def validate_hub_splits_spec(spec) -> None:
    """A recipe's hub_splits entry (`TaskSpec`): dataset_id= and task=, no path=."""
    if not spec.dataset_id:
        raise spec.error("source='hub_splits' needs dataset_id= (the repo of prepared splits).")
    if spec.path is not None:
        raise spec.error("source='hub_splits' reads from the Hub: remove path= (use source='generic' for local "
                         "files).")
    if not spec.task:
        raise spec.error("source='hub_splits' needs task= (the config named after the task in the repo).")


@task_sources.register("hub_splits", validate=validate_hub_splits_spec)
def load_hub_splits_spec(spec, options: LoadOptions) -> Task:
    """The task a validated hub_splits `TaskSpec` names."""
    return load_hub_splits_task(spec.dataset_id, spec.task, options)
