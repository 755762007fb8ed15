"""One typed check per recipe value (issue 27), used by `slice_trl.cli.recipe.load_recipe`.

Every key of a recipe, flat (``learning_rate``) or in a section (``init.c``), is checked once,
against the annotation of the dataclass field that declares it (`check_value`): a bool is not a
number, null/NaN/inf are refused where a number is needed, a float is not an integer, a string is
not a number (except a numeric one where a float is declared: YAML 1.1 reads ``5e-1`` as a string),
an enum-typed field (transformers' ``SchedulerType``, ``OptimizerNames``, ...) takes one of the
enum's values. `RANGES` adds the few value ranges a type cannot say. A flag given on the command
line without its value arrives as `NO_VALUE` and is resolved here: ``True`` for a true/false key,
"--KEY needs a value" otherwise.

`UniqueKeyLoader` is the YAML loader of a recipe: a key given twice in one mapping, at any depth,
is an error instead of "the last one wins".

Imports no ML library at import time (see `slice_trl.cli.recipe`).
"""

from __future__ import annotations

import enum
import functools
import math
import re
import typing

import yaml


class RecipeError(ValueError):
    """A recipe problem, with the key and the fix in the message."""


class _NoValue:
    def __repr__(self):
        return "<no value>"


NO_VALUE = _NoValue()  # `--key` on the command line with no value after it


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping."""

    def __init__(self, key, line: int):
        super().__init__(f"line {line}: key {key!r} is given twice; keep one of them (otherwise the last one "
                         "would silently win).")


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in a mapping (at any depth)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise DuplicateKeyError(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# key -> (test of a value of the right type, what the value must be): ranges a type cannot express
RANGES: dict[str, tuple[typing.Callable[[object], bool], str]] = {
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "data_seed": (lambda v: v >= 0, "an integer >= 0 (or null)"),
    "lora_r": (lambda v: v >= 1, "a positive integer (the LoRA rank)"),
    "output_dir": (lambda v: bool(v.strip()), "a non-empty folder path"),
}

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
          dict: "a mapping"}


@functools.cache
def _hints(cls) -> dict:
    """The resolved field annotations of a dataclass (resolving them costs a few ms per class)."""
    return typing.get_type_hints(cls)


def enum_values(hint) -> list[str] | None:
    """The values of the Enum a field's annotation names (``Union[SchedulerType, str]``), else None."""
    for arg in (*typing.get_args(hint), hint):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return [str(e.value) for e in arg]
    return None


def _members(hint) -> list:
    """``int | None`` -> [int, NoneType]; a plain type -> [it]."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return list(typing.get_args(hint))
    return [hint]


def _fits(member, value):
    """(fits, value as kept): whether ``value`` is of the annotation ``member`` (one member of a union)."""
    origin = typing.get_origin(member) or member
    if member is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(member) and type(value) in {type(a) for a in typing.get_args(member)}, value
    if value is None:
        return False, value
    if origin is bool:
        return isinstance(value, bool), value
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if origin is float:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            value = float(value)
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if origin is str:
        return isinstance(value, str), value
    if origin in (list, tuple):  # a single string too: TRL/PEFT take e.g. lora_target_modules: all-linear
        item = (typing.get_args(member) or (typing.Any,))[0]
        return isinstance(value, str) or isinstance(value, list) and all(_fits(item, v)[0] for v in value), value
    if origin is dict:
        return isinstance(value, dict), value
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        return isinstance(value, origin) or value in [e.value for e in origin], value
    if origin is typing.Any:
        return True, value
    if isinstance(origin, type):
        return isinstance(value, origin), value
    return True, value  # an annotation this check does not know: left to the config class


def _describe(members) -> str:
    words = []
    for m in members:
        origin = typing.get_origin(m) or m
        if m is type(None):
            continue
        if origin is typing.Literal:
            word = " or ".join(repr(a) for a in typing.get_args(m))
        elif isinstance(origin, type) and issubclass(origin, enum.Enum):
            word = f"one of {[e.value for e in origin]}"
        elif origin in (list, tuple) and typing.get_args(m) in ((str,),):
            word = "a list of strings"
        else:
            word = _WORDS.get(origin, getattr(origin, "__name__", str(origin)))
        if word not in words:
            words.append(word)
    return " or ".join(words) + (" (or null)" if type(None) in members else "")


def check_value(where: str, label: str, value, hint, default=None):
    """``value`` checked against the annotation ``hint`` of the field ``label`` (``learning_rate``,
    ``init.c``); returns it as kept (a numeric string of a float field as a float, `NO_VALUE` of a
    true/false field as True). Raises `RecipeError`: ``{where}: {label}={value!r} has the wrong
    type: it must be {expected} (e.g. --{label} {default}).``"""
    members = _members(hint)
    key = label.rsplit(".", 1)[-1]
    expected = RANGES[key][1] if key in RANGES and "." not in label else _describe(members)
    plain = {typing.get_origin(m) or m for m in members} - {type(None)}
    shown = str(default).lower() if isinstance(default, bool) else default
    example = f" (e.g. --{label} {shown})" if default is not None and plain & {int, float, bool} else ""
    if value is NO_VALUE:
        if bool in plain:
            return True  # `--use_cpu`: a switch
        raise RecipeError(f"--{label} needs a value, e.g. --{label} {shown if shown is not None else 'VALUE'}; "
                          f"it must be {expected}.")
    if value is None and default is None and type(None) not in members:
        return None  # declared without Optional but defaulting to None: null is its default
    ok, kept = False, value
    for member in members:
        ok, kept = _fits(member, value)
        if ok:
            break
    if not ok:
        if not example and str in plain and isinstance(value, (int, float)):  # YAML read `revision: 1234` as a number
            example = f" (quote it in the recipe: {key}: '{value}')"
        raise RecipeError(f"{where}: {label}={value!r} has the wrong type: it must be {expected}{example}.")
    if isinstance(kept, float) and not math.isfinite(kept):
        raise RecipeError(f"{where}: {label}={value!r} is not a finite number: it must be {expected}{example}.")
    if key in RANGES and "." not in label and kept is not None and not RANGES[key][0](kept):
        raise RecipeError(f"{where}: {label}={value!r} is out of range: it must be {expected}{example}.")
    return kept


def check_fields(where: str, prefix: str, cls, values: dict) -> dict:
    """Every key of ``values`` that is a field of the dataclass ``cls`` (and of its dataclass bases)
    checked by `check_value`, labelled ``{prefix}{key}``; unknown keys are left to the caller
    (reported with a suggestion). Returns the values as kept."""
    from dataclasses import MISSING, fields

    hints = _hints(cls)
    defaults = {f.name: (None if f.default is MISSING else f.default) for f in fields(cls)}
    out = dict(values)
    for key, value in values.items():
        if key in hints and key in defaults:
            out[key] = check_value(where, f"{prefix}{key}", value, hints[key], defaults[key])
    return out


def declared_choices(classes, key: str) -> list | None:
    """The values a flat key may take, as the config classes declare them: a field's ``choices``
    metadata (TRL's ``dtype``), else the Enum its annotation names in any dataclass of the
    classes' bases (transformers' ``lr_scheduler_type: SchedulerType | str``, ``optim``,
    ``eval_strategy``, ...), else None (any value of the right type)."""
    from dataclasses import fields, is_dataclass

    for cls in classes:
        for base in cls.__mro__:
            if not is_dataclass(base) or key not in base.__dict__.get("__annotations__", {}):
                continue
            declared = next((f for f in fields(base) if f.name == key), None)
            if declared is not None and declared.metadata.get("choices"):
                return list(declared.metadata["choices"])
            found = enum_values(_hints(base).get(key))
            if found is not None:
                return found
    return None


# Settings the run would otherwise ignore (or fail on after the model loads): key -> (the only value
# slice-trl honours, why and the fix). null (the default) is always fine.
HONOURED = {
    "load_in_4bit": (False, "QLoRA is not implemented (slice-trl trains LoRA adapters on the unquantised base "
                            "model); remove load_in_4bit"),
    "load_in_8bit": (False, "QLoRA is not implemented (slice-trl trains LoRA adapters on the unquantised base "
                            "model); remove load_in_8bit"),
    "lora_task_type": ("CAUSAL_LM", "slice-trl trains causal language models only; remove lora_task_type"),
    "use_peft": (True, "slice-trl always trains LoRA adapters; remove use_peft"),
    "eval_strategy": ("no", "the continual loop evaluates every seen task after each stage itself (the "
                            "evaluation: section); remove eval_strategy or set it to 'no'"),
}


def check_honoured(where: str, merged: dict, for_this_machine: bool) -> None:
    """`HONOURED`, ``attn_implementation`` against the implementations transformers has on this
    install, and a one-line ``warning:`` on stderr for ``model_revision`` of a local folder."""
    import sys
    from pathlib import Path

    from slice_trl.configs.settings import suggest

    for key, (honoured, why) in HONOURED.items():
        if merged.get(key) is not None and merged[key] != honoured:
            raise RecipeError(f"{where}: {key}={merged[key]!r} is not supported: {why}.")
    attn = merged.get("attn_implementation")
    if isinstance(attn, str) and "/" not in attn:  # "org/repo": a kernel from the Hub (transformers' kernels)
        from transformers import modeling_utils

        known = ["eager", *modeling_utils.ALL_ATTENTION_FUNCTIONS]
        if attn.removeprefix("paged|") not in known and attn not in known:
            raise RecipeError(f"{where}: attn_implementation={attn!r} is not an attention implementation of this "
                              f"transformers.{suggest(attn, known)} Choose one of {known}, or remove it (sdpa).")
        if for_this_machine and attn == "flash_attention_2":
            from transformers.utils import is_flash_attn_2_available

            if not is_flash_attn_2_available():
                raise RecipeError(f"{where}: attn_implementation={attn!r}: flash_attn is not installed here; "
                                  "install it with `pip install flash-attn`, or use sdpa.")
    name, revision = merged.get("model_name_or_path"), merged.get("model_revision")
    if revision is not None and isinstance(name, str) and Path(name).expanduser().is_dir():
        print(f"warning: model_revision={revision!r} is ignored: {name!r} is a local folder (a revision selects "
              "a commit of a Hub model); remove model_revision.", file=sys.stderr)


def check_with_transformers(where: str, training) -> None:
    """What transformers would refuse once the model is loaded, asked of transformers itself before:
    the optimizer class of ``optim`` (its package installed, e.g. bitsandbytes for ``*bnb*``)."""
    from transformers import Trainer

    optim = getattr(training.optim, "value", training.optim)
    try:
        Trainer.get_optimizer_cls_and_kwargs(training)
    except ImportError as err:
        raise RecipeError(f"{where}: optim={optim!r} cannot be used here: {' '.join(str(err).split()).rstrip('.')}; "
                          "or choose another optim (default adamw_torch_fused).") from None
    except ValueError as err:
        if "install" in str(err):  # otherwise it needs the model (GaLore, LOMO, ...): checked when it loads
            raise RecipeError(f"{where}: optim={optim!r} cannot be used here: "
                              f"{' '.join(str(err).split()).rstrip('.')}.") from None


def name_the_key(message: str, merged: dict) -> str:
    """A config class's own error in one line, prefixed with ``key=value`` for the first recipe key
    it mentions (transformers' messages name the field but not always its value)."""
    message = " ".join(message.split())
    keys = [k for k in merged if isinstance(k, str)]
    if any(f"{key}=" in message for key in keys):
        return message  # it names a key and its value already
    for key in keys:
        if re.search(rf"\b{re.escape(key)}\b", message):
            return f"{key}={merged[key]!r}: {message}"
    return message
