"""Everything that touches lm-evaluation-harness (the ``eval`` extra): GP and IP of a model, and
every benchmark built before any model loads.

docs/method.md, "Evaluation and metrics": GP = mean zero-shot primary metric of the general
benchmarks (``EvalConfig.lm_eval_tasks``) on the in-memory model, IP = the same few-shot. Which
benchmarks, their local data and task files are `slice_trl.evaluation.general`'s.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence

from slice_trl.utils import console
from slice_trl.models.lora import eval_mode
from slice_trl.configs.settings import EvalConfig
from slice_trl.evaluation.general import LOCAL_TEMPLATES, read_task_folder, task_folders
from slice_trl.evaluation.generation import generating_model, model_device

__all__ = ["PRIMARY_METRICS", "LMEvalDataError", "load_task", "resolve_tasks", "evaluate_general",
           "evaluate_general_lm"]

# Primary metric of a task when EvalConfig.lm_eval_metrics names none: docs/method.md scores HellaSwag
# by acc_norm, CommonsenseQA by acc and BBH by exact_match.
PRIMARY_METRICS = ("acc_norm", "acc", "exact_match", "em", "f1", "rougeL", "rouge1", "bleu", "mcc")


# ---------------------------------------------------------------------------------------------
# lm-eval itself: requiring it, building its tasks, keeping it quiet
# ---------------------------------------------------------------------------------------------

class _QuietLMEvalNotes(logging.Filter):
    """lm-eval warnings that are notes for its own command line, printed for every run and
    expected here: "Custom kwargs can be passed to `--metadata`" (tasks built from
    ``custom_dataset``), "Overwriting default num_fewshot" (GP and IP ask for their shots on
    purpose), and the two notes on an in-memory model (ours is, on every process)."""

    NOTES = ("Custom kwargs can be passed", "Overwriting default num_fewshot",
             "`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(note in record.getMessage() for note in self.NOTES)


# installed on import: every lm-eval run of this package (GP/IP, resolve_tasks) goes through this module
for _name in ("lm_eval.api.task", "lm_eval.evaluator", "lm_eval.models.huggingface"):
    logging.getLogger(_name).addFilter(_QuietLMEvalNotes())


class LMEvalDataError(RuntimeError):
    """An lm-eval task whose data cannot be loaded (offline Hub, missing dataset or file)."""


def _require_lm_eval():
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(
            "General-ability evaluation (EvalConfig.lm_eval_tasks) needs lm-evaluation-harness: "
            "pip install 'slice-trl[eval]' (or set lm_eval_tasks to an empty list to skip GP/IP)."
        ) from err
    return simple_evaluate, HFLM, TaskManager


def _task_manager(TaskManager, include_path, names: Sequence[str]):
    """A TaskManager that knows ``names``. Indexing lm-eval's built-in task folder takes tens of
    seconds, so when every name is defined under ``include_path`` (a folder or a list of
    folders) only those folders are indexed."""
    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(name in local.all_tasks for name in names):
            return local
    return TaskManager(include_path=include_path)


_DATA_ERROR_MARKERS = ("ConnectionError", "Couldn't reach", "offline", "Offline", "LocalEntryNotFound",
                       "Name or service not known", "Max retries", "timed out", "DatasetNotFound",
                       "doesn't exist on the Hub", "FileNotFound", "RepositoryNotFound", "HTTPError",
                       "Unable to find", "EmptyDatasetError", "DataFilesNotFound")


def _local_hint(name: str) -> str:
    """The fix for a task whose data cannot be loaded, on one line."""
    if name in LOCAL_TEMPLATES:
        local = (f"give a local copy with evaluation.lm_eval_local_data: {{{name}: /path/{name}.jsonl}} "
                 "(README, 'General ability (GP/IP)')")
    else:
        local = ("point evaluation.lm_eval_include_path at a folder with a task YAML of the same name that reads a "
                 "local file (dataset_path: json, dataset_kwargs: {data_files: {test: /abs/file.jsonl}}, "
                 "test_split: test)")
    return (f"Fix: {local}, fill the datasets cache on a machine with network access, or remove {name!r} from "
            "evaluation.lm_eval_tasks.")


def load_task(task_manager, name: str):
    """Build the lm-eval task/group/tag ``name`` (this loads its data), with clear errors."""
    try:
        loaded = task_manager.load([name])
    except KeyError as err:
        raise ValueError(
            f"lm-eval task {name!r} is not a built-in task and is not defined under "
            f"evaluation.lm_eval_include_path ({err}). " + _local_hint(name)
        ) from None
    except Exception as err:  # noqa: BLE001 - data errors are classified, the rest re-raised
        text = f"{type(err).__name__}: {err}"
        if isinstance(err, (ConnectionError, TimeoutError, FileNotFoundError)) or any(
                m in text for m in _DATA_ERROR_MARKERS):
            raise LMEvalDataError(f"lm-eval task {name!r}: its data could not be loaded "
                                  f"({text.splitlines()[0][:300]}). " + _local_hint(name)) from err
        raise
    if name in loaded.get("groups", {}):
        return [loaded["groups"][name]]
    return list(loaded["tasks"].values())  # one task, or every task of a tag


@contextlib.contextmanager
def _quiet_lm_eval():
    """lm-eval logs ~20 INFO lines per task run (seeds, task selection, contexts); keep its
    warnings and errors only, unless the user asked for INFO on the ``lm_eval`` logger. Where the
    run's console has no progress bars (quiet, output not a terminal: `slice_trl.utils.console`), lm-eval's
    own tqdm bars (4-5 per task run, written to ``sys.stderr``) are dropped too; log records still
    show, since logging handlers hold the real stream."""
    lm_logger = logging.getLogger("lm_eval")
    level = lm_logger.level
    if level == logging.NOTSET:
        lm_logger.setLevel(logging.WARNING)
    bars = contextlib.nullcontext() if console.bars_enabled() else contextlib.redirect_stderr(io.StringIO())
    # simple_evaluate records `git describe` of the current directory (meaningless for an in-memory
    # model) and lets git print "fatal: not a git repository" outside a checkout: skip that call
    from unittest import mock

    import lm_eval.evaluator

    no_git = mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None, create=True)
    try:
        with bars, no_git:
            yield
    finally:
        lm_logger.setLevel(level)


# ---------------------------------------------------------------------------------------------
# Every benchmark built before any model loads
# ---------------------------------------------------------------------------------------------

def resolve_tasks(cfg: EvalConfig, run_user_code: bool = True) -> list[str]:
    """Build every ``cfg.lm_eval_tasks`` entry and load its data, before any model loads.

    ``run_user_code=False`` (``--dry-run``): the YAMLs of ``cfg.lm_eval_include_path`` are first
    read as data (`slice_trl.evaluation.general.read_task_folder`). A task there that names a
    ``!function`` (or a group or tag of them) is not built, since lm-eval would import that code:
    one note each, returned. Plain tasks there are built as on a real run (lm-eval indexes a
    folder's YAMLs without resolving ``!function``, and such a task imports nothing), as are
    built-in tasks and ours; the folder is shown to lm-eval only when such a task is needed.

    Raises ``ValueError`` whose message is ONE line naming the benchmark, why it cannot be
    used and the fix (a local file, the datasets cache, or dropping it)."""
    if not cfg.lm_eval_tasks:
        return []
    _, _, TaskManager = _require_lm_eval()
    names, notes, user = list(cfg.lm_eval_tasks), [], True
    if cfg.lm_eval_include_path and not run_user_code:
        defined = read_task_folder(cfg.lm_eval_include_path)
        code = [n for n in names if n in defined and not defined[n]["plain"]]
        for name in code:
            refs = defined[name]["functions"]
            notes.append(f"lm-eval task {name!r} ({', '.join(defined[name]['files'])}) names code: its functions "
                         f"{', '.join(refs) or '(of its subtasks or unreadable includes)'} run and its data is loaded "
                         "on a real run, not by --dry-run")
        names = [n for n in names if n not in code]
        user = any(n in defined for n in names)  # lm-eval sees the folder only when a plain task there is needed
    if not names:
        return notes
    with task_folders(cfg, user=user) as folders, _quiet_lm_eval():
        manager = _task_manager(TaskManager, folders, names)
        for name in names:
            try:
                loaded = load_task(manager, name)
            except (LMEvalDataError, ValueError) as err:
                raise ValueError(" ".join(str(err).split())) from None
            shots = int(cfg.lm_eval_fewshot_overrides.get(name, cfg.lm_eval_num_fewshot))
            for task in loaded:
                _check_fewshot_pool(name, task, shots)
    return notes


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
# GP / IP of a model
# ---------------------------------------------------------------------------------------------

def _metric_entries(entry: dict) -> dict[str, float]:
    """{"acc,none": 0.5, ...} -> {"acc,none": 0.5} without stderr and bookkeeping keys."""
    return {k: float(v) for k, v in entry.items()
            if "," in k and "_stderr" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _primary(entry: dict, preferred: str | None) -> tuple[str, float] | None:
    """(metric key, value) of the primary metric of one lm-eval result entry."""
    metrics = _metric_entries(entry)
    if not metrics:
        return None
    if preferred:
        for key, value in metrics.items():
            if key == preferred or key.split(",", 1)[0] == preferred:
                return key, value
        raise ValueError(f"lm-eval result has no metric {preferred!r}; it has {sorted(metrics)}.")
    for name in PRIMARY_METRICS:
        for key, value in metrics.items():
            if key.split(",", 1)[0] == name:
                return key, value
    key = next(iter(metrics))
    return key, metrics[key]


def _score_of(name: str, out: dict, preferred: str | None) -> dict:
    """{"metric": key, "score": value, "n": examples, "num_fewshot": shots} for task/group ``name``."""
    results = out["results"]
    found = _primary(results.get(name, {}), preferred)
    n_samples = out.get("n-samples", {})
    if found is None:  # a group without aggregate metrics: mean of its subtasks' primary metrics
        subtasks = out.get("group_subtasks", {}).get(name) or [k for k in results if k != name]
        parts = [_primary(results[s], preferred) for s in subtasks if s in results]
        parts = [p for p in parts if p is not None]
        if not parts:
            raise ValueError(f"lm-eval returned no metric for task {name!r}: {results.get(name)}")
        key = parts[0][0]
        value = sum(p[1] for p in parts) / len(parts)
        n = sum(n_samples.get(s, {}).get("effective", 0) for s in subtasks)
    else:
        key, value = found
        n = n_samples.get(name, {}).get("effective")
        if n is None:
            n = sum(v.get("effective", 0) for v in n_samples.values())
    shots = out.get("n-shot", {}).get(name)
    return {"metric": key, "score": value, "n": n, "num_fewshot": shots}


def _task_names(cfg: EvalConfig) -> list[str]:
    """``cfg.lm_eval_tasks``; raises ``ValueError`` when it names none."""
    if not cfg.lm_eval_tasks:
        raise ValueError("EvalConfig.lm_eval_tasks is empty: name at least one lm-eval task (e.g. 'hellaswag').")
    return list(cfg.lm_eval_tasks)


def evaluate_general(model, tokenizer, cfg: EvalConfig, accelerator=None) -> dict:
    """GP and IP on ``cfg.lm_eval_tasks`` with lm-evaluation-harness (the ``eval`` extra).

    Each task is run twice on the in-memory model (``HFLM(pretrained=model, ...)``, a PeftModel
    works): zero-shot, then ``cfg.lm_eval_fewshot_overrides.get(task, cfg.lm_eval_num_fewshot)``
    shots (lm-eval keeps a task's own ``num_fewshot: 0`` whatever is asked; the shots really used
    are reported). The primary metric of a task is ``cfg.lm_eval_metrics[task]`` when given, else
    the first of acc_norm, acc, exact_match, ... that the task reports. Returns::

        {"GP": mean zero-shot score, "IP": mean few-shot score,
         "zero_shot": {task: {"metric": "acc_norm,none", "score": float, "n": int, "num_fewshot": int}},
         "few_shot":  {task: {...}},
         "tasks": [...], "limit": cfg.lm_eval_limit}

    Each rank evaluates everything (an in-memory HFLM is single-process), so under DDP/ZeRO-3
    every rank returns the same numbers. Raises ``ValueError`` for an unknown task name and
    `LMEvalDataError` when a task's data cannot be loaded, both naming the task and how to use a
    local task YAML.
    """
    _, HFLM, _ = _require_lm_eval()
    _task_names(cfg)  # an empty list fails before HFLM wraps the model
    model = generating_model(model, accelerator)
    with eval_mode(model):  # HFLM calls model.eval() too; every module's training flag comes back afterwards
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, device=str(model_device(model)))
        return evaluate_general_lm(lm, cfg)


def evaluate_general_lm(lm, cfg: EvalConfig) -> dict:
    """`evaluate_general` on any lm-eval model object (an ``lm_eval.api.model.LM``): each of
    ``cfg.lm_eval_tasks`` zero-shot and few-shot, found in our own task folder, the local-data
    tasks and ``cfg.lm_eval_include_path`` (`slice_trl.evaluation.general.task_folders`) or lm-eval's
    own."""
    simple_evaluate, _, TaskManager = _require_lm_eval()
    names = _task_names(cfg)
    overrides = dict(cfg.lm_eval_fewshot_overrides or {})
    metrics = dict(cfg.lm_eval_metrics or {})
    report = {"zero_shot": {}, "few_shot": {}}
    with task_folders(cfg) as folders, _quiet_lm_eval():
        task_manager = _task_manager(TaskManager, folders, names)
        for name in names:
            for key, shots in (("zero_shot", 0), ("few_shot", int(overrides.get(name, cfg.lm_eval_num_fewshot)))):
                # Task objects are built afresh for every run: simple_evaluate writes num_fewshot
                # into them, and a 0 written by the zero-shot run would pin the few-shot run to 0.
                tasks = load_task(task_manager, name)
                out = simple_evaluate(model=lm, tasks=tasks, num_fewshot=shots, limit=cfg.lm_eval_limit,
                                      task_manager=task_manager, log_samples=False, bootstrap_iters=0)
                if out is None:  # non-zero lm.rank; cannot happen with an in-memory model
                    raise RuntimeError(f"lm-eval returned no results for {name!r} on this process.")
                report[key][name] = _score_of(name, out, metrics.get(name))
    gp = sum(v["score"] for v in report["zero_shot"].values()) / len(names)
    ip = sum(v["score"] for v in report["few_shot"].values()) / len(names)
    return {"GP": gp, "IP": ip, **report, "tasks": names, "limit": cfg.lm_eval_limit}
