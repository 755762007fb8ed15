"""General ability (GP / IP) as the paper reports it: its benchmarks, local data, base-model
reference and the numbers written to ``results.json`` and the stage records.

docs/method.md, "Evaluation and metrics": GP = mean zero-shot score on held-out general benchmarks
(HellaSwag acc_norm, CommonsenseQA acc, BBH object counting exact match; Alpaca by ROUGE-L on
generated answers), IP = the same few-shot (5-shot; 3-shot for BBH). The paper's figures show
them per stage as a change from the base model.

This module holds

- the paper's benchmark settings (`PAPER_BENCHMARKS`), as the recipes spell them;
- the functions our own lm-eval task YAMLs call (``slice_trl/lm_eval_tasks/``: the Alpaca task
  and the quickstart's generated smoke-check tasks);
- local data: ``EvalConfig.lm_eval_local_data`` names a benchmark and a local JSON-lines file, and
  `task_folders` writes a task YAML that includes the shipped format-only template
  (``slice_trl/lm_eval_local/``) and reads that file;
- `resolve_tasks`: every benchmark built (its data loaded) before any model loads, with a
  one-line error naming the benchmark and the fix;
- `summarize`: GP/IP with the base model's scores and the change from them.

The harness calls themselves are in `slice_trl.evaluation.evaluate_general`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

__all__ = [
    "PAPER_BENCHMARKS",
    "LOCAL_TEMPLATES",
    "ALPACA_SAMPLE",
    "package_task_dir",
    "task_folders",
    "resolve_tasks",
    "summarize",
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

# benchmark -> format-only template in slice_trl/lm_eval_local/ (the eval split is "test").
LOCAL_TEMPLATES = {
    "hellaswag": "hellaswag.yaml",
    "commonsense_qa": "commonsense_qa.yaml",
    "bbh_fewshot_object_counting": "bbh_object_counting.yaml",
    "slice_alpaca": "slice_alpaca.yaml",
}

ALPACA_SAMPLE = 200  # records of Alpaca scored (a fixed, seeded sample)
ALPACA_SEED = 42


def _package_dir(name: str) -> Path:
    return Path(str(resources.files("slice_trl") / name))


def package_task_dir() -> Path:
    """``slice_trl/lm_eval_tasks``: our own lm-eval tasks, always on the harness's search path."""
    return _package_dir("lm_eval_tasks")


# ---------------------------------------------------------------------------------------------
# Functions called from the task YAMLs (``!function slice_trl.general.NAME``)
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
    from .evaluation import rouge_l

    return {"rougeL": rouge_l(results[0].strip(), str(doc["output"]))}


def _animal_questions(n: int, seed: int) -> list[dict]:
    """Multiple-choice docs "Which of these is an animal: a, b, c?" over the built-in suite's
    words: one animal and two objects, in a seeded order."""
    from .tasks.builtin import WORDS

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


class _QuietLMEvalNotes(logging.Filter):
    """lm-eval warnings that are notes for its own command line, printed for every run and
    expected here: "Custom kwargs can be passed to `--metadata`" (tasks built from
    ``custom_dataset``), "Overwriting default num_fewshot" (GP and IP ask for their shots on
    purpose), and the two notes on an in-memory model (ours is, on every process)."""

    NOTES = ("Custom kwargs can be passed", "Overwriting default num_fewshot",
             "`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(note in record.getMessage() for note in self.NOTES)


for _name in ("lm_eval.api.task", "lm_eval.evaluator", "lm_eval.models.huggingface"):
    logging.getLogger(_name).addFilter(_QuietLMEvalNotes())


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

    from .tasks.builtin import WORDS

    plural = {"bus": "buses", "fox": "foxes", "mouse": "mice", "fish": "fish", "wolf": "wolves"}
    countable = [w for w in WORDS if w not in ("bread", "milk", "rain")]
    words = random.Random(11).sample(countable, 9)
    docs = [{"instruction": f"Write the plural of the word '{w}'.", "input": "", "output": plural.get(w, w + "s")}
            for w in words]
    return DatasetDict({"test": Dataset.from_list(docs[:4]), "train": Dataset.from_list(docs[4:])})


# ---------------------------------------------------------------------------------------------
# Task folders and resolution (before any model loads)
# ---------------------------------------------------------------------------------------------

def _yaml_quote(text: str) -> str:
    import json

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


@contextlib.contextmanager
def task_folders(cfg) -> Iterator[list[str]]:
    """The lm-eval include paths of ``cfg`` (an `EvalConfig`): our own tasks, a temporary folder
    of local-data tasks (removed afterwards), then the user's ``lm_eval_include_path``. lm-eval
    lets a later folder override an earlier one and every folder override its built-in tasks of
    the same name, so a local HellaSwag replaces the Hub one and the user's own YAML wins."""
    with tempfile.TemporaryDirectory(prefix="slice_trl_lm_eval_") as tmp:
        folders = [str(package_task_dir())]
        if cfg.lm_eval_local_data:
            write_local_tasks(cfg.lm_eval_local_data, Path(tmp))
            folders.append(tmp)
        if cfg.lm_eval_include_path:
            folders.append(str(cfg.lm_eval_include_path))
        yield folders  # lm-eval: later include paths override earlier ones


def resolve_tasks(cfg) -> None:
    """Build every ``cfg.lm_eval_tasks`` entry and load its data, before any model loads.

    Raises ``ValueError`` whose message is ONE line naming the benchmark, why it cannot be
    used and the fix (a local file, the datasets cache, or dropping it)."""
    from .evaluation import LMEvalDataError, _load_task, _quiet_lm_eval, _require_lm_eval, _task_manager

    if not cfg.lm_eval_tasks:
        return
    _, _, TaskManager = _require_lm_eval()
    with task_folders(cfg) as folders, _quiet_lm_eval():
        manager = _task_manager(TaskManager, folders, cfg.lm_eval_tasks)
        for name in cfg.lm_eval_tasks:
            try:
                loaded = _load_task(manager, name)
            except (LMEvalDataError, ValueError) as err:
                raise ValueError(" ".join(str(err).split())) from None
            shots = int(cfg.lm_eval_fewshot_overrides.get(name, cfg.lm_eval_num_fewshot))
            for task in loaded:
                _check_fewshot_pool(name, task, shots)


def _check_fewshot_pool(name: str, task, shots: int) -> None:
    """IP draws ``shots`` examples from the task's few-shot pool (one more when the pool is the
    scored split: a record is never its own example); lm-eval fails mid-run on a smaller pool."""
    config = getattr(task, "config", None)
    if shots == 0 or config is None or not hasattr(task, "fewshot_docs"):
        return  # a group: its subtasks are lm-eval's own, checked by lm-eval
    docs = task.fewshot_docs()
    if docs is None:
        return
    scored = config.test_split or config.validation_split
    needed = shots + (1 if config.fewshot_split is not None and config.fewshot_split == scored else 0)
    if len(docs) < needed:
        raise ValueError(f"lm-eval task {name!r} has {len(docs)} few-shot examples, fewer than IP's {shots} shots "
                         f"need ({needed}). Fix: set evaluation.lm_eval_fewshot_overrides: {{{name}: "
                         f"{max(len(docs) - needed + shots, 0)}}} or a smaller evaluation.lm_eval_num_fewshot, or give "
                         "the task more examples.")


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


def change_text(g: dict) -> str:
    """"GP 43.8 (base 45.0, -1.2)  IP 47.1 (base 46.0, +1.1)" (x100) of a `summarize` dict."""
    parts = []
    for key in ("GP", "IP"):
        text = f"{key} {100 * g[key]:.1f}"
        if g.get("change"):
            text += f" (base {100 * g['base'][key]:.1f}, {100 * g['change'][key]:+.1f})"
        parts.append(text)
    return "  ".join(parts)


def summary_line(g: dict) -> str:
    """`change_text` + "(x100, after stage 3; tasks ...)", the console's line after R."""
    return f"{change_text(g)}  (x100, after stage {g['stage']}; {', '.join(g['tasks'])})"


def same_settings(cached: dict, cfg) -> bool:
    """Whether cached base-model scores were measured with ``cfg``'s general-ability settings."""
    return cached.get("settings") == settings(cfg)


def settings(cfg) -> dict:
    """The EvalConfig fields that change GP/IP (what a cached base-model result must match)."""
    return {k: getattr(cfg, k) for k in ("lm_eval_tasks", "lm_eval_num_fewshot", "lm_eval_limit",
                                         "lm_eval_fewshot_overrides", "lm_eval_metrics", "lm_eval_local_data",
                                         "lm_eval_include_path", "batch_size")}
