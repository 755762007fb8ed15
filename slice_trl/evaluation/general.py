"""General ability (GP / IP) as the paper reports it: its benchmarks, local data, base-model
reference and the numbers written to the run's results and the stage records.

docs/method.md, "Evaluation and metrics": GP = mean zero-shot score on held-out general benchmarks
(HellaSwag acc_norm, CommonsenseQA acc, BBH object counting exact match; Alpaca by ROUGE-L on
generated answers), IP = the same few-shot (5-shot; 3-shot for BBH). The paper's figures show
them per stage as a change from the base model.

This module holds

- the paper's benchmark settings (`PAPER_BENCHMARKS`), as the recipes spell them;
- the functions our own lm-eval task YAMLs call (``lm_eval_tasks/`` here: the Alpaca task
  and the quickstart's generated smoke-check tasks);
- local data: ``EvalConfig.lm_eval_local_data`` names a benchmark and a local JSON-lines file, and
  `task_folders` writes a task YAML that includes the shipped format-only template
  (``lm_eval_local/`` here) and reads that file;
- `summarize`: GP/IP with the base model's scores and the change from them, and the settings
  (`settings`) a cached base-model result must match (`slice_trl.trainer.stages.base_measurement`).

This module never imports lm-eval: the harness calls (`evaluate_general`, `resolve_tasks`) are in
`slice_trl.evaluation.harness`.
"""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import yaml

from slice_trl.configs.settings import EvalConfig
from slice_trl.tasks.builtin import WORDS
from slice_trl.evaluation.metrics import rouge_l

__all__ = [
    "PAPER_BENCHMARKS",
    "LOCAL_TEMPLATES",
    "ALPACA_SAMPLE",
    "package_task_dir",
    "write_local_tasks",
    "task_folders",
    "read_task_folder",
    "summarize",
    "settings",
    "alpaca_docs",
    "alpaca_prompt",
    "alpaca_process_results",
    "smoke_choice_dataset",
    "smoke_alpaca_dataset",
]

# lm-eval task -> (primary metric, IP shots); GP is always 0-shot. The recipes spell these out
# as evaluation.lm_eval_tasks / lm_eval_metrics / lm_eval_fewshot_overrides.
PAPER_BENCHMARKS = {
    "hellaswag": ("acc_norm", 5),
    "commonsense_qa": ("acc", 5),
    "bbh_fewshot_object_counting": ("exact_match", 3),
    "slice_alpaca": ("rougeL", 5),
}

# benchmark -> format-only template in lm_eval_local/ next to this module (the eval split is "test").
LOCAL_TEMPLATES = {
    "hellaswag": "hellaswag.yaml",
    "commonsense_qa": "commonsense_qa.yaml",
    "bbh_fewshot_object_counting": "bbh_object_counting.yaml",
    "slice_alpaca": "slice_alpaca.yaml",
}

ALPACA_SAMPLE = 200  # records of Alpaca scored (a fixed, seeded sample)
ALPACA_SEED = 42


def _package_dir(name: str) -> Path:
    """A data folder shipped in this package (pyproject.toml's package-data), as a path lm-eval can read."""
    return Path(str(resources.files(__package__) / name))


def package_task_dir() -> Path:
    """``slice_trl/evaluation/lm_eval_tasks``: our own lm-eval tasks, always on the harness's search path."""
    return _package_dir("lm_eval_tasks")


# ---------------------------------------------------------------------------------------------
# Functions called from the task YAMLs (``!function slice_trl.evaluation.general.NAME``)
# ---------------------------------------------------------------------------------------------

def alpaca_docs(dataset):
    """The fixed Alpaca sample: ``ALPACA_SAMPLE`` records drawn with seed ``ALPACA_SEED`` (all of
    them when the dataset is smaller), in a seeded order. The same records on every machine."""
    n = min(ALPACA_SAMPLE, len(dataset))
    return dataset.shuffle(seed=ALPACA_SEED).select(range(n))


def alpaca_prompt(doc: dict) -> str:
    """Alpaca's own prompt: instruction, the input when there is one, then the response header
    (the preamble sentence is the task's ``description``, shown once before any examples)."""
    text = f"### Instruction:\n{doc['instruction'].strip()}\n\n"
    if (doc.get("input") or "").strip():
        text += f"### Input:\n{doc['input'].strip()}\n\n"
    return text + "### Response:\n"


def alpaca_process_results(doc: dict, results: Sequence[str]) -> dict:
    """{"rougeL": ROUGE-L F-measure of the generated answer against the record's output}."""
    return {"rougeL": rouge_l(results[0].strip(), str(doc["output"]))}


def _animal_questions(n: int, seed: int) -> list[dict]:
    """Multiple-choice docs "Which of these is an animal: a, b, c?" over the built-in suite's
    words: one animal and two objects, in a seeded order."""
    animals = ["bird", "cat", "dog", "fish", "fox", "horse", "lion", "mouse", "pig", "wolf"]
    things = [w for w in WORDS if w not in animals and w not in ("nest", "rose", "tree", "star", "sun", "moon")]
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        choices = [rng.choice(animals)] + rng.sample(things, 2)
        rng.shuffle(choices)
        label = next(k for k, w in enumerate(choices) if w in animals)
        docs.append({"question": f"Which of these is an animal: {', '.join(choices)}?", "choices": choices,
                     "label": label})
    return docs


def smoke_choice_dataset(**_):
    """The quickstart's generated multiple-choice smoke task: 8 test and 5 few-shot docs (enough
    for the default 5-shot IP)."""
    from datasets import Dataset, DatasetDict

    docs = _animal_questions(13, seed=7)
    return DatasetDict({"test": Dataset.from_list(docs[:8]), "train": Dataset.from_list(docs[8:])})


def smoke_alpaca_dataset(**_):
    """The quickstart's generated Alpaca-style smoke task: 4 test and 5 few-shot instructions
    with one-word answers ("Write the plural of the word 'cat'." -> "cats")."""
    from datasets import Dataset, DatasetDict

    plural = {"bus": "buses", "fox": "foxes", "mouse": "mice", "fish": "fish", "wolf": "wolves"}
    countable = [w for w in WORDS if w not in ("bread", "milk", "rain")]
    words = random.Random(11).sample(countable, 9)
    docs = [{"instruction": f"Write the plural of the word '{w}'.", "input": "", "output": plural.get(w, w + "s")}
            for w in words]
    return DatasetDict({"test": Dataset.from_list(docs[:4]), "train": Dataset.from_list(docs[4:])})


# ---------------------------------------------------------------------------------------------
# Task folders: ours, the local-data tasks, the user's
# ---------------------------------------------------------------------------------------------

def _yaml_quote(text: str) -> str:
    return json.dumps(str(text))  # a JSON string is a valid double-quoted YAML scalar


def write_local_tasks(local_data: dict[str, str], folder: Path) -> None:
    """One task YAML per ``benchmark: data file`` in ``folder``: the shipped template of that
    benchmark, reading the file as its eval (and few-shot) split. Raises ``ValueError`` for a
    benchmark without a template or a file that does not exist."""
    templates = _package_dir("lm_eval_local")
    for name, data_file in local_data.items():
        if name not in LOCAL_TEMPLATES:
            raise ValueError(f"evaluation.lm_eval_local_data[{name!r}]: no local template for this benchmark "
                             f"(templates: {sorted(LOCAL_TEMPLATES)}); for another task write your own task YAML "
                             "and point evaluation.lm_eval_include_path at its folder.")
        path = Path(data_file).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"evaluation.lm_eval_local_data[{name!r}]={str(data_file)!r} is not a file: give the "
                             "path of a JSON-lines copy of the benchmark's data (README, 'General ability').")
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ninclude: {_yaml_quote(templates / LOCAL_TEMPLATES[name])}\n"
            f"dataset_kwargs:\n  data_files:\n    test: {_yaml_quote(path)}\n", encoding="utf-8")


class _DataLoader(yaml.SafeLoader):
    """YAML as data: ``!function module.name`` becomes the string ``"!function module.name"``
    (lm-eval's own loader imports the module, i.e. runs the folder's code)."""


_DataLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def _functions(value) -> list[str]:
    """Every ``!function`` reference in a task YAML's data, in order."""
    if isinstance(value, str):
        return [value.split(" ", 1)[1]] if value.startswith("!function ") else []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [ref for item in items for ref in _functions(item)]


def read_task_folder(folder) -> dict[str, dict]:
    """The lm-eval tasks, groups and tags defined by the YAML files under ``folder`` (a path or a
    list of paths), read as data: nothing is imported. ``{name: {"files": [yaml paths],
    "functions": ["module.name" of every !function in those files and the files they include],
    "plain": True when the name is a task (not a group or tag) whose files and includes were all
    read and name no function, i.e. lm-eval builds it without importing anything}}``. A YAML
    that cannot be parsed defines nothing (lm-eval skips it too)."""

    def parse(path: Path) -> dict | None:
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_DataLoader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None
        return data if isinstance(data, dict) else None

    def functions(path: Path, seen: frozenset) -> list[str] | None:
        """Every !function of ``path`` and its includes (resolved as lm-eval does); None when one
        of them cannot be read (so nothing is known about it)."""
        data = parse(path)
        if data is None or path in seen:
            return None
        refs = _functions(data)
        includes = data.get("include") or []
        for inc in includes if isinstance(includes, list) else [includes]:
            more = functions((path.parent / str(inc)).expanduser().resolve(), seen | {path})
            if more is None:
                return None
            refs += more
        return refs

    out: dict[str, dict] = {}
    for root in ([folder] if isinstance(folder, (str, Path)) else list(folder)):
        for path in sorted(Path(root).expanduser().rglob("*.yaml")):
            data = parse(path.resolve())
            if data is None:
                continue
            tags = data.get("tag") if isinstance(data.get("tag"), list) else [data.get("tag")]
            refs = functions(path.resolve(), frozenset())
            for kind, name in [("task", data.get("task")), ("group", data.get("group"))] + [("tag", t) for t in tags]:
                if not isinstance(name, str):
                    continue
                entry = out.setdefault(name, {"files": [], "functions": [], "plain": True})
                entry["files"].append(str(path))
                entry["functions"] += [f for f in (refs or []) if f not in entry["functions"]]
                entry["plain"] = entry["plain"] and kind == "task" and refs == []
    return out


@contextlib.contextmanager
def task_folders(cfg: EvalConfig, user: bool = True) -> Iterator[list[str]]:
    """The lm-eval include paths of ``cfg`` (an `EvalConfig`): our own tasks, a temporary folder
    of local-data tasks (removed afterwards), then the user's ``lm_eval_include_path``. lm-eval
    lets a later folder override an earlier one and every folder override its built-in tasks of
    the same name, so a local HellaSwag replaces the Hub one and the user's own YAML wins.
    ``user=False`` leaves the user's folder out (validation that needs none of its tasks)."""
    with tempfile.TemporaryDirectory(prefix="slice_trl_lm_eval_") as tmp:
        folders = [str(package_task_dir())]
        if cfg.lm_eval_local_data:
            write_local_tasks(cfg.lm_eval_local_data, Path(tmp))
            folders.append(tmp)
        if cfg.lm_eval_include_path and user:
            folders.append(str(cfg.lm_eval_include_path))
        yield folders  # lm-eval: later include paths override earlier ones


# ---------------------------------------------------------------------------------------------
# Results: GP/IP, the base model's, and the change
# ---------------------------------------------------------------------------------------------

def _benchmarks(final: dict, base: dict | None) -> dict:
    """{task: {"metric", "shots": {"GP", "IP"}, "GP", "IP" (final scores), "base": {"GP", "IP"},
    "change": {"GP", "IP"}}} (the model card's table reads these keys)."""
    out = {}
    for name in final["tasks"]:
        zero, few = final["zero_shot"][name], final["few_shot"][name]
        entry = {"metric": zero["metric"].split(",", 1)[0],
                 "shots": {"GP": zero.get("num_fewshot"), "IP": few.get("num_fewshot")},
                 "GP": zero["score"], "IP": few["score"], "base": None, "change": None}
        if base is not None and name in base.get("zero_shot", {}) and name in base.get("few_shot", {}):
            entry["base"] = {"GP": base["zero_shot"][name]["score"], "IP": base["few_shot"][name]["score"]}
            entry["change"] = {k: entry[k] - entry["base"][k] for k in ("GP", "IP")}
        out[name] = entry
    return out


def summarize(final: dict, base: dict | None, stage: int) -> dict:
    """GP/IP after ``stage`` (an `evaluate_general` result) with the base model's scores:

        {"GP", "IP", "stage",
         "base": {"GP", "IP", "zero_shot", "few_shot"}, "change": {"GP", "IP"} (final - base),
         "benchmarks": {task: {"metric", "shots": {"GP", "IP"}, "GP", "IP",
                               "base": {"GP", "IP"}, "change": {"GP", "IP"}}},
         "zero_shot", "few_shot", "tasks", "limit"}

    ``base``/``change`` are None when no base-model scores are given. Scores are fractions 0-1."""
    out = {"GP": final["GP"], "IP": final["IP"], "stage": stage}
    if base is not None:
        out["base"] = {k: base[k] for k in ("GP", "IP", "zero_shot", "few_shot")}
        out["change"] = {"GP": final["GP"] - base["GP"], "IP": final["IP"] - base["IP"]}
    else:
        out["base"] = out["change"] = None
    out["benchmarks"] = _benchmarks(final, base)
    out.update({k: final[k] for k in ("zero_shot", "few_shot", "tasks", "limit")})
    return out


def settings(cfg: EvalConfig) -> dict:
    """The EvalConfig fields that change GP/IP (what a cached base-model result must match)."""
    return {k: getattr(cfg, k) for k in ("lm_eval_tasks", "lm_eval_num_fewshot", "lm_eval_limit",
                                         "lm_eval_fewshot_overrides", "lm_eval_metrics", "lm_eval_local_data",
                                         "lm_eval_include_path", "batch_size")}
