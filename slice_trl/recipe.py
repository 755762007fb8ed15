"""Recipe YAML + command-line overrides -> validated configs. Every user error is raised here,
as a `RecipeError` naming the key and the fix, before any model is loaded.

A recipe follows TRL's `TrlParser` conventions (flat keys of `ContinualSFTConfig`, TRL's
`ModelConfig` and `RunArguments`; an ``env:`` mapping goes to ``os.environ``), plus three nested
sections for the continual loop's sub-configs (``init:``, ``replay:``, ``evaluation:``) and the
task list (``tasks:``). Overrides are ``--key value`` for flat keys and ``--section.key value``
for nested ones, e.g. ``--init.method lora_ga --learning_rate 2e-4``.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .config import ContinualSFTConfig, EvalConfig, InitConfig, ReplayConfig

SECTIONS = {"init": InitConfig, "replay": ReplayConfig, "evaluation": EvalConfig}


class RecipeError(ValueError):
    """A recipe problem, with the key and the fix in the message."""


@dataclass
class RunArguments:
    """Script-level settings of `slice_trl.run` (besides the trainer and model configs)."""

    data_dir: str | None = field(
        default=None,
        metadata={"help": "Directory that relative task paths resolve against (default: the current directory). "
                  "E.g. --data_dir ../shared/data/superni for natural-instructions task files."},
    )
    push_repo_id: str | None = field(
        default=None,
        metadata={"help": "Publish every finished stage (adapter, R, card) to this Hub model repo, e.g. "
                  "'my-org/slice-trace'. None = do not publish."},
    )
    push_dataset_repo_id: str | None = field(
        default=None,
        metadata={"help": "Also push the prepared task splits to this Hub dataset repo (reproducible from the Hub)."},
    )
    push_private: bool = field(default=False, metadata={"help": "Create the Hub repos as private."})


def _model_config_cls():
    from trl import ModelConfig

    return ModelConfig


def _dataclasses():
    return (RunArguments, ContinualSFTConfig, _model_config_cls())


def flat_fields() -> dict[str, object]:
    """Every flat recipe key -> the dataclass field that declares it."""
    out = {}
    for cls in _dataclasses():
        for f in fields(cls):
            if f.init:
                out.setdefault(f.name, f)
    return out


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def parse_overrides(argv: list[str]) -> dict[str, object]:
    """``--a value``, ``--a=value``, ``--sec.key value`` -> {"a": value, "sec": {"key": value}}.
    Values are read as YAML scalars/lists (``0.5`` -> float, ``true`` -> bool, ``[a, b]`` -> list)."""
    out: dict[str, object] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise RecipeError(f"Unexpected argument {tok!r}: overrides are '--key value' pairs.")
        key, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                value = "true"  # a bare flag
            else:
                i += 1
                value = argv[i]
        i += 1
        parsed = yaml.safe_load(value) if value != "" else ""
        if "." in key:
            section, sub = key.split(".", 1)
            out.setdefault(section, {})
            if not isinstance(out[section], dict):
                raise RecipeError(f"--{key}: {section!r} is not a section.")
            out[section][sub] = parsed
        else:
            out[key.replace("-", "_")] = parsed
    return out


def _merge(recipe: dict, overrides: dict) -> dict:
    merged = dict(recipe)
    for key, value in overrides.items():
        if key in SECTIONS and isinstance(value, dict):
            merged[key] = {**(merged.get(key) or {}), **value}
        else:
            merged[key] = value
    return merged


@dataclass
class Recipe:
    """A validated recipe."""

    path: Path | None
    raw: dict
    run: RunArguments
    training: ContinualSFTConfig
    model: object  # trl.ModelConfig
    task_specs: list
    missing_data: list[str] = field(default_factory=list)  # only when validated for another machine

    def lora_config(self):
        from trl import get_peft_config

        self.model.use_peft = True
        return get_peft_config(self.model)


def load_recipe(path: str | os.PathLike | None, overrides: list[str] | dict | None = None,
                for_this_machine: bool = True) -> Recipe:
    """Read, merge and validate a recipe. Raises `RecipeError` (never loads a model).

    ``for_this_machine=False`` validates a recipe meant for another machine (a GPU recipe on a
    CPU-only box, as `--dry-run` does): hardware checks of TrainingArguments are skipped by
    validating it as a CPU run."""
    from trl import TrlParser

    from .tasks import MissingDataError, TaskSpec

    raw: dict = {}
    where = "recipe"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise RecipeError(f"Recipe file {where!r} does not exist. Give the path of a YAML recipe, e.g. "
                              "recipes/quickstart.yaml.")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise RecipeError(f"{where} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{where} must be a YAML mapping of keys to values, not {type(raw).__name__}.")
    over = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or []))
    merged = _merge(raw, over)

    env = merged.pop("env", None) or {}
    if not isinstance(env, dict):
        raise RecipeError(f"{where}: 'env' must be a mapping of environment variables.")
    for k, v in env.items():
        os.environ[str(k)] = str(v)

    known = flat_fields()
    allowed = set(known) | set(SECTIONS) | {"tasks"}
    for key in merged:
        if key not in allowed:
            raise RecipeError(f"{where}: unknown key {key!r}.{_suggest(key, allowed)} Run `python -m slice_trl.run "
                              "--help` for every key.")
    for name, cls in SECTIONS.items():
        section = merged.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise RecipeError(f"{where}: '{name}' must be a mapping of {cls.__name__} fields.")
        try:
            cls.from_dict(section)
        except ValueError as err:
            raise RecipeError(f"{where}: {name}: {err}") from None

    tasks = merged.pop("tasks", None)
    if not tasks:
        raise RecipeError(f"{where}: 'tasks' is missing or empty. Add a list of tasks, e.g.\n"
                          "tasks:\n  - {name: first, source: builtin}\n  - {name: last, source: builtin}")
    if not isinstance(tasks, list):
        raise RecipeError(f"{where}: 'tasks' must be a list of task mappings.")
    data_dir = merged.get("data_dir")
    specs, missing = [], []
    for i, item in enumerate(tasks):
        if not isinstance(item, dict):
            raise RecipeError(f"{where}: tasks[{i}] must be a mapping (name, source, ...), got {item!r}.")
        try:
            specs.append(TaskSpec.from_dict(item, base_dir=data_dir))
        except MissingDataError as err:
            if for_this_machine:
                raise RecipeError(f"{where}: tasks[{i}]: {err} Set data_dir (--data_dir PATH) to the folder that "
                                  "holds the task data.") from None
            missing.append(f"tasks[{i}]: {err}")
        except (TypeError, ValueError) as err:
            raise RecipeError(f"{where}: tasks[{i}] ({item.get('name', '?')}): {err}") from None
    names = [s.display_name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RecipeError(f"{where}: duplicate task names {dupes}; every task needs a unique 'name'.")

    if not merged.get("model_name_or_path"):
        raise RecipeError(f"{where}: 'model_name_or_path' is missing. Set it to a Hub id, a local path or "
                          "'smollm2-135m-instruct' (the bundled offline model).")
    lora_r = merged.get("lora_r", 16)
    if not isinstance(lora_r, int) or lora_r <= 0:
        raise RecipeError(f"{where}: lora_r={lora_r!r} must be a positive integer (the LoRA rank).")
    merged.setdefault("output_dir", str(Path("runs") / (Path(where).stem if path else "run")))

    if not for_this_machine:
        import torch

        if not torch.cuda.is_available():
            merged["use_cpu"] = True
    parser = TrlParser(_dataclasses())
    try:
        parser.set_defaults_with_config(**merged)
        run_args, training, model = parser.parse_args_into_dataclasses(args=[])
    except SystemExit:  # argparse reports type errors by exiting
        raise RecipeError(f"{where}: a value has the wrong type (see the message above).") from None
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{where}: {err}") from None
    model.use_peft = True
    return Recipe(Path(path) if path else None, {**merged, "tasks": tasks}, run_args, training, model, specs, missing)


def help_text() -> str:
    """Every key with its help text, grouped as in a recipe."""
    lines = ["Recipe keys (YAML, or --key value on the command line):", ""]

    def block(title, cls, prefix=""):
        lines.append(title)
        for f in fields(cls):
            if not f.init:
                continue
            helptext = " ".join(str(f.metadata.get("help", "")).split())
            lines.append(f"  {prefix}{f.name} (default {f.default!r}): {helptext}" if f.default is not
                         field().default else f"  {prefix}{f.name}: {helptext}")
        lines.append("")

    from .tasks import TaskSpec

    block("Script (RunArguments):", RunArguments)
    block("Model and LoRA (trl.ModelConfig):", _model_config_cls())
    for name, cls in SECTIONS.items():
        block(f"Section '{name}:' ({cls.__name__}), override with --{name}.KEY VALUE:", cls, prefix=f"{name}.")
    block("Each entry of 'tasks:' (TaskSpec):", TaskSpec, prefix="tasks[].")
    block("Training of every stage (ContinualSFTConfig = trl.SFTConfig + the continual loop):", ContinualSFTConfig)
    return "\n".join(lines)
