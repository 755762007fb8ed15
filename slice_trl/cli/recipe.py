"""Recipe YAML + command-line overrides -> validated configs, in one pass (`load_recipe`): the
file is read once, its ``env:`` applied once, and every error of the recipe itself is raised
here, as a `RecipeError` naming the key and the fix, before any model is loaded (a config
dataclass's own ValueError becomes a `RecipeError` here; each value's typed check is
`slice_trl.cli.values`). The checks that need more than the recipe (the model's structure,
output_dir, the Hub, the task data) are `slice_trl.cli.preflight`.

This module imports no ML library at import time: a recipe's ``env:`` (only `ENV_ALLOWED`, e.g.
HF_HUB_OFFLINE) must be in ``os.environ`` before trl, transformers, huggingface_hub and datasets
are imported, since they read these variables once, at import.

A recipe follows TRL's `TrlParser` conventions (flat keys of `ContinualSFTConfig`, TRL's
`ModelConfig` and `RunArguments`; an ``env:`` mapping goes to ``os.environ``), plus three nested
sections for the continual loop's sub-configs (``init:``, ``replay:``, ``evaluation:``) and the
task list (``tasks:``). Overrides are ``--key value`` for flat keys and ``--section.key value``
for nested ones, e.g. ``--init.method lora_ga --learning_rate 2e-4``.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from slice_trl.cli.values import (NO_VALUE, DuplicateKeyError, RecipeError, UniqueKeyLoader, check_fields,
                                  check_honoured, check_with_transformers, declared_choices, name_the_key)
from slice_trl.configs.settings import duplicate_names, suggest

if typing.TYPE_CHECKING:
    from slice_trl.configs.config import ContinualSFTConfig

SECTION_NAMES = ("init", "replay", "evaluation", "strategy")


def section_classes() -> dict:
    """Recipe section -> its config class (imported here, not at module import: see the docstring)."""
    from slice_trl.configs.settings import EvalConfig, InitConfig, ReplayConfig
    from slice_trl.strategies import StrategyConfig

    return {"init": InitConfig, "replay": ReplayConfig, "evaluation": EvalConfig, "strategy": StrategyConfig}


def __getattr__(name):  # SECTIONS: the same mapping as a module attribute, built when first asked for
    if name == "SECTIONS":
        return section_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ENV_ALLOWED", "Recipe", "RecipeError", "RunArguments", "load_recipe", "parse_overrides"]

# The only environment variables a recipe's ``env:`` may set: each changes how much the run prints,
# threads or caches on the GPU, whether the libraries go online, or the tracker project's name, never
# where the Hub token is read from or sent, where code is loaded from, TLS, proxies, HOME/XDG_*/HF_HOME
# or the caches (README, "What a recipe can do"). Anything else: the user's own shell.
ENV_ALLOWED = ("TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF",
               "CUDA_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
               "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_PROGRESS_BARS",
               "HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_ETAG_TIMEOUT", "TRANSFORMERS_VERBOSITY", "WANDB_PROJECT",
               "WANDB_MODE", "TRACKIO_PROJECT")


def refused_env_keys(env: dict) -> list[str]:
    """The keys of a recipe's ``env:`` mapping that are not in `ENV_ALLOWED`, sorted."""
    return sorted(str(k) for k in env if str(k) not in ENV_ALLOWED)


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


def model_config_cls():
    from trl import ModelConfig

    return ModelConfig


def _dataclasses():
    from slice_trl.configs.config import ContinualSFTConfig

    return (RunArguments, ContinualSFTConfig, model_config_cls())


def flat_fields() -> dict[str, object]:
    """Every flat recipe key -> the dataclass field that declares it."""
    out = {}
    for cls in _dataclasses():
        for f in fields(cls):
            if f.init:
                out.setdefault(f.name, f)
    return out


def parse_overrides(argv: list[str]) -> dict[str, object]:
    """``--a value``, ``--a=value``, ``--sec.key value`` -> {"a": value, "sec": {"key": value}}.
    Values are read as YAML scalars/lists (``0.5`` -> float, ``true`` -> bool, ``[a, b]`` -> list).
    ``--a`` with no value (last, or followed by another ``--flag``) -> `NO_VALUE`: True for a
    true/false key, an error naming the flag otherwise (`values.check_value`, once the types are known)."""
    out: dict[str, object] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise RecipeError(f"Unexpected argument {tok!r}: overrides are '--key value' pairs.")
        key, eq, value = tok[2:].partition("=")
        given = bool(eq)
        if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            i, value, given = i + 1, argv[i + 1], True
        i += 1
        try:
            parsed = (yaml.load(value, Loader=UniqueKeyLoader) if value != "" else "") if given else NO_VALUE
        except yaml.YAMLError as err:
            raise RecipeError(f"--{key} {value!r} is not a valid value: {' '.join(str(err).split())}") from None
        if "." in key:
            section, sub = key.split(".", 1)
            out.setdefault(section, {})
            if not isinstance(out[section], dict):
                raise RecipeError(f"--{key}: {section!r} is not a section.")
            out[section][sub.replace("-", "_")] = parsed
        else:
            out[key.replace("-", "_")] = parsed
    return out


def _merge(recipe: dict, overrides: dict) -> dict:
    merged = dict(recipe)
    for key, value in overrides.items():
        base = merged.get(key)
        if key in SECTION_NAMES and isinstance(value, dict) and (base is None or isinstance(base, dict)):
            merged[key] = {**(base or {}), **value}
        elif key in SECTION_NAMES and isinstance(value, dict):
            pass  # the recipe's section is not a mapping: keep it so that validation reports it
        else:
            merged[key] = value
    return merged


def _concrete_section_class(cls, section: dict):
    """The dataclass whose fields a section holds: for ``strategy:`` the named strategy's config
    class (its fields are type-checked too), else ``cls`` itself."""
    from slice_trl.strategies import StrategyConfig
    from slice_trl.utils.registry import strategies

    if cls is StrategyConfig and isinstance(section.get("name"), str) and section["name"] in strategies:
        return strategies.get(section["name"]).obj.config_cls
    return cls


class _ArgumentError(Exception):
    """argparse's error message, raised instead of printing the usage and exiting."""


def _raise_argument_error(message: str):
    raise _ArgumentError(message)


def _argument_error_message(where: str, message: str, merged: dict, known: dict) -> str:
    """'argument --num_train_epochs/--num-train-epochs: invalid float value: 'abc'' -> a message
    naming the key, the value and the fix."""
    match = re.match(r"argument --([\w.]+)[^:]*: (.*)", message, re.S)
    if not match:
        return f"{where}: {message}"
    key, reason = match.group(1), match.group(2).strip()
    value = merged.get(key, "?")
    hint = ""
    choices = re.search(r"\(choose from (.*)\)", reason)
    if choices and isinstance(value, str):
        options = [c.strip(" '\"") for c in choices.group(1).split(",")]
        hint = suggest(value, options)
    f = known.get(key)
    ftype = getattr(f, "type", None) if f is not None else None
    tname = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", None)
    expects = f" {key} expects {tname}." if tname else ""
    return (f"{where}: {key}={value!r} is not valid ({reason}).{hint}{expects} Fix it in the recipe or override it "
            f"with --{key} VALUE; `python -m slice_trl.run --help` lists every key.")


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

    def load_tokenizer(self):
        """The model's tokenizer (pad token = eos when it has none); a wrong name, or a Hub id not
        cached while offline, is one `RecipeError`."""
        from transformers import AutoTokenizer

        from slice_trl.models.loading import resolve_model_path

        m = self.model
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(m.model_name_or_path), revision=m.model_revision,
                                                      trust_remote_code=self.training.trust_remote_code)
        except (OSError, ValueError) as err:  # a wrong name/path, or offline without the model in the cache
            raise RecipeError(f"model_name_or_path={m.model_name_or_path!r}: the tokenizer could not be loaded "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Give a Hub "
                              "id, a local checkpoint directory or 'smollm2-135m-instruct' (the bundled offline "
                              "model).") from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def load_tasks(self, tokenizer=None, *, local_only: bool = False) -> list:
        """The recipe's tasks (`slice_trl.tasks.build_tasks`); a data problem is one `RecipeError`
        naming the task. With a tokenizer the examples are fitted to ``max_length``; without one
        they are not (a dry run reads and checks the data only). ``local_only`` skips tasks read
        from the Hub."""
        from slice_trl.tasks import build_tasks

        max_length = self.training.max_length if tokenizer is not None else None
        return build_tasks(self.task_specs, tokenizer, max_length, local_only=local_only, error=RecipeError)


def load_recipe(path: str | os.PathLike | None, overrides: list[str] | dict | None = None,
                for_this_machine: bool = True, before_libraries: Callable[[], None] | None = None) -> Recipe:
    """Read, merge and validate a recipe in one pass. Raises `RecipeError` (never loads a model).

    The file is read once; its ``env:`` is checked, then applied to ``os.environ`` (once), then
    ``before_libraries`` runs (the CLI's logging setup), and only then are trl & co. imported to
    validate the rest. An invalid recipe leaves ``os.environ`` as it was.

    ``for_this_machine=False`` validates a recipe meant for another machine (a GPU recipe on a
    CPU-only box, as `--dry-run` does): hardware checks of TrainingArguments are skipped by
    validating it as a CPU run."""
    where, merged, env = _read(path, overrides)
    previous = {k: os.environ.get(k) for k in map(str, env)}
    for k, v in env.items():
        os.environ[str(k)] = "" if v is None else str(v)
    try:
        if before_libraries is not None:
            before_libraries()
        return _validate(path, where, merged, for_this_machine)
    except RecipeError:
        for k, v in previous.items():  # an invalid recipe leaves the environment as it was
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        raise


def _read(path, overrides) -> tuple[str, dict, dict]:
    """The recipe file (read once) merged with the overrides, and its checked ``env:`` mapping:
    (where, merged keys without env, env). Imports no ML library."""
    raw: dict = {}
    where = "recipe"
    if path is not None:
        p = Path(path)
        where = str(p)
        if p.is_dir():
            raise RecipeError(f"Recipe path {where!r} is a directory; give the path of a YAML recipe file, e.g. "
                              "recipes/quickstart.yaml.")
        if not p.is_file():
            raise RecipeError(f"Recipe file {where!r} does not exist. Give the path of a YAML recipe, e.g. "
                              "recipes/quickstart.yaml.")
        try:
            raw = yaml.load(p.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
        except UnicodeDecodeError as err:
            raise RecipeError(f"{where} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                              "save the recipe as UTF-8.") from None
        except DuplicateKeyError as err:
            raise RecipeError(f"{where}: {err}") from None
        except yaml.YAMLError as err:
            raise RecipeError(f"{where} is not valid YAML: {' '.join(str(err).split())}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{where} must be a YAML mapping of keys to values, not {type(raw).__name__}.")
    over = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or []))
    merged = _merge(raw, over)

    env = merged.pop("env", None) or {}
    if not isinstance(env, dict):
        raise RecipeError(f"{where}: 'env' must be a mapping of environment variables (NAME: value), "
                          f"got {type(env).__name__}.")
    refused = refused_env_keys(env)
    if refused:
        raise RecipeError(f"{where}: env sets {refused}, which a recipe may not set: env: may set only "
                          f"{', '.join(ENV_ALLOWED)} (README, 'What a recipe can do'); set any other variable "
                          "in your own shell if you mean to.")
    return where, merged, env


def _validate(path, where: str, merged: dict, for_this_machine: bool) -> Recipe:
    """Every check of the recipe's keys, sections and tasks, then TRL's parser -> `Recipe`."""
    from trl import TrlParser

    from slice_trl.tasks import MissingDataError, TaskSpec

    sections = section_classes()
    known = flat_fields()
    if "hub_token" in merged:  # never echoed: the value is a credential
        raise RecipeError(f"{where}: hub_token is not a recipe key (a recipe is shared; the token is yours alone): "
                          "set HF_TOKEN in your environment or run `hf auth login`, and remove hub_token.")
    allowed = set(known) | set(sections) | {"tasks", "sequence"}
    for key in merged:
        if key not in allowed:
            raise RecipeError(f"{where}: unknown key {key!r}.{suggest(key, allowed)} Run `python -m slice_trl.run "
                              "--help` for every key.")
    classes, todo = _dataclasses(), {k: v for k, v in merged.items() if k in known and k not in sections}
    for cls in classes:  # each flat key once, against the class that declares it (flat_fields' order)
        mine = {k: v for k, v in todo.items() if known[k] in fields(cls)}
        for key, kept in check_fields(where, "", cls, mine).items():
            # a bare flag becomes True; a numeric string stays as given (argparse converts it, and the
            # recipe kept in run.json stays as written)
            merged[key] = kept if mine[key] is NO_VALUE else merged[key]
            todo.pop(key)
    for key, value in merged.items():  # the values the config classes declare (choices, transformers' enums)
        choices = declared_choices(classes, key) if isinstance(value, str) else None
        if choices is None:
            continue
        choices = [c for c in choices if not (key == "dtype" and c == "auto")]  # the loader needs a real dtype
        if value not in choices:
            raise RecipeError(f"{where}: {key}={value!r} is not valid.{suggest(value, choices)} "
                              f"Choose one of {choices}.")
    check_honoured(where, merged, for_this_machine)
    for name, cls in sections.items():
        section = merged.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise RecipeError(f"{where}: '{name}' must be a mapping of {cls.__name__} fields, e.g. "
                              f"'{name}: {{KEY: VALUE}}' or --{name}.KEY VALUE; got {section!r}.")
        concrete = _concrete_section_class(cls, section)
        section = merged[name] = check_fields(where, f"{name}.", concrete, section)
        try:
            cls.from_dict(section)
        except ValueError as err:  # "EvalConfig.lm_eval_limit=0 ..." -> "evaluation.lm_eval_limit=0 ..."
            message = str(err).replace(f"{concrete.__name__}.", f"{name}.").replace(f"{cls.__name__}.", f"{name}.")
            raise RecipeError(f"{where}: {message if message.startswith(name) else f'{name}: {message}'}") from None

    sequence, tasks = merged.pop("sequence", None), merged.pop("tasks", None)
    if sequence is not None:  # a named benchmark order (slice_trl.tasks.sequences) instead of a task list
        from slice_trl.tasks.sequences import expand_sequence

        if tasks:
            raise RecipeError(f"{where}: give either 'sequence' ({sequence!r}) or 'tasks', not both.")
        try:
            tasks = expand_sequence(sequence)
        except ValueError as err:
            raise RecipeError(f"{where}: {err}") from None
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
    dupes = duplicate_names(names)
    if dupes:
        raise RecipeError(f"{where}: duplicate task names {dupes}; every task needs a unique 'name'.")

    if not merged.get("model_name_or_path"):
        raise RecipeError(f"{where}: 'model_name_or_path' is missing. Set it to a Hub id, a local path or "
                          "'smollm2-135m-instruct' (the bundled offline model).")
    merged.setdefault("output_dir", str(Path("runs") / (Path(where).stem if path else "run")))

    if not for_this_machine:  # (the recipe's env, e.g. CUDA_VISIBLE_DEVICES, is applied already)
        import torch

        if not torch.cuda.is_available():
            merged["use_cpu"] = True
    parser = TrlParser(_dataclasses())
    parser.error = _raise_argument_error  # argparse would print the whole usage and exit
    try:
        parser.set_defaults_with_config(**merged)
        run_args, training, model = parser.parse_args_into_dataclasses(args=[])
    except _ArgumentError as err:  # argparse's type conversion of a flat key failed
        raise RecipeError(_argument_error_message(where, str(err), merged, known)) from None
    except SystemExit:  # pragma: no cover - any other argparse exit
        raise RecipeError(f"{where}: a value has the wrong type (see the message above).") from None
    except (ValueError, TypeError) as err:  # TrainingArguments' / SFTConfig's own validation
        raise RecipeError(f"{where}: {name_the_key(str(err), merged)}") from None
    check_with_transformers(where, training)
    model.use_peft = True
    raw_out = {**merged, **({"sequence": sequence} if sequence is not None else {}), "tasks": tasks}
    return Recipe(Path(path) if path else None, raw_out, run_args, training, model, specs, missing)

