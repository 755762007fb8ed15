"""Checks of a validated recipe that need more than its dataclasses, run by `slice_trl.run`
before any model loads (also under ``--dry-run``): numeric training settings, LoRA settings
against the base model's structure (its config.json read as data and an empty-weights
instantiation: no weights loaded, none of the model's own code run), output_dir, Hub repo ids,
the task data itself, and output_dir's previous run (`check_output_dir`). Every problem is one
`RecipeError` line: the key, the bad value, the fix.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

from slice_trl.cli.recipe import Recipe, RecipeError

logger = logging.getLogger(__name__)


OUTPUT_STATES = {"new": "new run", "resume": "resumes the run there (same settings)",
                 "replace": "a real run first moves the previous run there aside (resume=false / --overwrite)",
                 "restart": "a run there finished no stage: a real run starts it afresh with these settings"}


def _fail(key: str, value, why: str, fix: str):
    raise RecipeError(f"{key}={value!r} {why}; {fix}.")


def check_training(recipe: Recipe) -> None:
    """Training settings TrainingArguments accepts but that cannot train (or silently do not)."""
    a, m = recipe.training, recipe.model
    if not a.learning_rate > 0:
        _fail("learning_rate", a.learning_rate, "must be > 0", "set e.g. --learning_rate 1e-4 (the paper)")
    if a.max_steps < -1 or a.max_steps == 0:
        _fail("max_steps", a.max_steps, "must be -1 (train num_train_epochs) or >= 1",
              "set --max_steps -1 or a positive number of optimizer steps per stage")
    if a.max_steps == -1 and not a.num_train_epochs > 0:
        _fail("num_train_epochs", a.num_train_epochs, "must be > 0 when max_steps is unset (-1)",
              "set e.g. --num_train_epochs 1, or --max_steps N")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(a, key) < 1:
            _fail(key, getattr(a, key), "must be >= 1", f"set --{key} 1 or more")
    if a.max_length is not None and a.max_length < 1:
        _fail("max_length", a.max_length, "must be >= 1 tokens", "set e.g. --max_length 256 (the paper)")
    if a.weight_decay < 0:
        _fail("weight_decay", a.weight_decay, "must be >= 0", "set --weight_decay 0 (the default)")
    if not 0 <= m.lora_dropout < 1:
        _fail("lora_dropout", m.lora_dropout, "must be in [0, 1)", "set e.g. --lora_dropout 0.05, or 0 for none")
    if not m.lora_alpha > 0:
        _fail("lora_alpha", m.lora_alpha, "must be > 0 (the LoRA scaling is alpha / r)", "set e.g. --lora_alpha 32")


def check_output_path(output_dir: str) -> None:
    """output_dir must be a directory, or creatable: its nearest existing ancestor must accept a
    new file (probed with a temporary file that is removed at once, so that a read-only mount
    is caught even for root)."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        _fail("output_dir", output_dir, "is a file, not a directory", "choose another --output_dir")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        _fail("output_dir", output_dir, f"cannot be created: {str(probe)!r} is a file", "choose another --output_dir")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".slice_trl_write_probe")
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        _fail("output_dir", output_dir, f"is not writable ({str(probe)!r}: {err.strerror or err})",
              "choose a writable --output_dir")


def check_trackers(recipe: Recipe) -> None:
    """Every report_to tracker is installed here (its name is checked with the config)."""
    from slice_trl.trainer.tracking import check_installed

    try:
        check_installed(recipe.training.report_to)
    except ValueError as err:
        raise RecipeError(str(err)) from None


def check_repo_ids(recipe: Recipe) -> None:
    """Hub repo ids, by huggingface_hub's own validator."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for key in ("push_repo_id", "push_dataset_repo_id"):
        value = getattr(recipe.run, key)
        if value is None:
            continue
        try:
            validate_repo_id(value)
        except HFValidationError as err:
            _fail(key, value, f"is not a valid Hub repo id ({' '.join(str(err).split())})",
                  f"use 'namespace/name', e.g. --{key} my-org/slice-run")


def check_push_only(recipe: Recipe) -> None:
    """``--push-only`` publishes to the recipe's Hub model repo: it must name one."""
    if not recipe.run.push_repo_id:
        raise RecipeError("--push-only needs push_repo_id (the Hub model repo) in the recipe or as --push_repo_id.")


def _model_config(recipe: Recipe):
    """``(config, note)``: the base model's transformers config built from its config.json read as
    data (`slice_trl.models.loading.read_model_config`; never the model's own code), or
    ``(None, why the structure is not checked here)``. A local folder whose config cannot be
    read, or a model type that needs code the recipe does not allow, is a `RecipeError`."""
    from slice_trl.models.loading import (ModelConfigError, config_from_data, read_model_config,
                                          remote_code_files, remote_code_line)

    m = recipe.model
    name = m.model_name_or_path
    try:
        data, where = read_model_config(name, m.model_revision)
    except (ModelConfigError, FileNotFoundError, ImportError) as err:  # ImportError: the GGUF reader (gguf)
        raise RecipeError(f"model_name_or_path={name!r}: {err}; give a model folder written by save_pretrained, "
                          "a Hub id or 'smollm2-135m-instruct' (the bundled offline model).") from None
    if data is None:
        return None, (f"model config of {name!r} not readable here: lora_target_modules and lora_r are checked "
                      "when the run loads it")
    if remote_code_files(data) and recipe.training.trust_remote_code:
        # the run would build the model from that code: --dry-run does not run it, so it cannot check
        return None, (f"{remote_code_line(name, data, where)} --dry-run does not run it: lora_target_modules and "
                      "lora_r are not checked")
    try:
        config = config_from_data(data)
    except (TypeError, ValueError) as err:  # transformers' own validation of the config's values
        why = " ".join(str(err).split())[:200]
        raise RecipeError(f"model_name_or_path={name!r}: its config.json is not a valid {data.get('model_type')!r} "
                          f"config ({why}); fix or replace the model's config.json.") from None
    if config is None:
        needs = remote_code_files(data)
        raise RecipeError(f"model_name_or_path={name!r}: model_type={data.get('model_type')!r} is not a type this "
                          "transformers knows" + (f" (its config.json names its own code {needs}); set "
                                                 "trust_remote_code: true only if you trust that code"
                                                 if needs else "; upgrade transformers or choose another model") + ".")
    return config, None


def _empty_peft_model(recipe: Recipe, config):
    """The base model built from ``config`` with empty (meta) weights, with the recipe's LoRA
    attached by PEFT itself (so PEFT resolves target_modules exactly as the run will), and the
    names of its modules."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from peft import get_peft_model

    from slice_trl.trainer.trl_private import no_zero3_init  # (ZeRO-3 would build it inside deepspeed.zero.Init)

    m = recipe.model
    with warnings.catch_warnings(), init_empty_weights(), no_zero3_init():
        warnings.simplefilter("ignore")
        try:
            model = AutoModelForCausalLM.from_config(config)
        except ValueError:
            raise RecipeError(f"model_name_or_path={m.model_name_or_path!r} is a {type(config).__name__} model, not "
                              "a causal language model; choose a decoder model (e.g. smollm2-135m-instruct).") from None
        names = [n for n, _ in model.named_modules()]
        try:
            return get_peft_model(model, recipe.lora_config()), names
        except ValueError as err:
            raise RecipeError(
                f"lora_target_modules={m.lora_target_modules!r} matches no module of {m.model_name_or_path!r} "
                f"({' '.join(str(err).split())[:160]}); name its linear layers, e.g. [q_proj, v_proj], or use "
                "all-linear.") from None


def check_model_structure(recipe: Recipe) -> str | None:
    """Every named target module exists in the model, and every targeted layer is large enough
    for the rank the initialiser needs (2r for slice/lora_ga, r otherwise). Returns a note (one
    line) when these cannot be checked here (a Hub config not reachable, or the model's own
    code, which validation never runs), else None."""
    from slice_trl.models.lora import ADAPTER, check_rank, lora_layers

    config, note = _model_config(recipe)
    if config is None:
        return note
    peft_model, names = _empty_peft_model(recipe, config)
    m = recipe.model
    targets = m.lora_target_modules
    if isinstance(targets, (list, tuple)):
        absent = [t for t in targets if t not in names and not any(n.endswith("." + t) for n in names)]
        if absent:
            leaves = sorted({n.rsplit(".", 1)[-1] for n, mod in peft_model.named_modules()
                             if type(mod).__name__ == "Linear" and "lora_" not in n})
            raise RecipeError(f"lora_target_modules={list(targets)!r}: {m.model_name_or_path!r} has no module "
                              f"{absent}; remove them or choose from its linear layers {leaves}.")
    try:
        check_rank(lora_layers(peft_model, ADAPTER), ADAPTER, needs_2r=recipe.training.init.needs_2r)
    except ValueError as err:
        raise RecipeError(f"lora_r={m.lora_r}: {err}".replace("LoraConfig.r=", "r=")) from None
    return None


def check_engine(recipe: Recipe) -> None:
    """The strategy against the engine the run is launched on (DeepSpeed's ZeRO stage from the
    recipe's ``deepspeed`` or from ``accelerate launch``'s environment): one line for a
    combination that cannot work (`slice_trl.strategies.base.engine_problem`)."""
    from slice_trl.utils.distributed import launched_zero_stage
    from slice_trl.strategies.base import engine_problem

    strategy = recipe.training.strategy
    if strategy is None:
        return
    why = engine_problem(strategy.name, launched_zero_stage(getattr(recipe.training, "deepspeed", None)))
    if why:
        raise RecipeError(why)


def check_general_tasks(recipe: Recipe, dry_run: bool = False) -> list[str]:
    """Build every GP/IP benchmark (``evaluation.lm_eval_tasks``) and load its data: one that
    cannot be resolved on this machine (offline, no local copy) is one line naming it and the
    fix, not a failure after every stage has trained (`slice_trl.evaluation.resolve_tasks`).
    ``dry_run``: the tasks of ``evaluation.lm_eval_include_path`` are read as data only (their
    ``!function`` code is not run); returns a note for each."""
    from slice_trl.evaluation import resolve_tasks

    try:
        return resolve_tasks(recipe.training.evaluation, run_user_code=not dry_run)
    except (ValueError, ImportError) as err:
        raise RecipeError(f"evaluation.lm_eval_tasks: {err}") from None


def check_recipe(recipe: Recipe, dry_run: bool = False) -> list[str]:
    """Every check above, in order; raises the first problem as a `RecipeError`. Returns notes
    (one line each) on the checks that could not be made here (``dry_run``: also those that would
    run code the recipe points to)."""
    check_training(recipe)
    check_trackers(recipe)
    check_engine(recipe)
    check_repo_ids(recipe)
    check_output_path(recipe.training.output_dir)
    notes = check_general_tasks(recipe, dry_run)
    if recipe.training.trust_remote_code and not dry_run:  # (a dry run prints it as a "not checked" line)
        from slice_trl.models.loading import announce_remote_code

        announce_remote_code(recipe.model.model_name_or_path, recipe.model.model_revision)
    note = check_model_structure(recipe)
    return notes + ([note] if note else [])


def check_previous_run(recipe: Recipe, tasks=None) -> str:
    """Compare this run's fingerprint with the run already in output_dir (writing nothing).
    Returns "new", "resume", "restart" or "replace" (see `integrity.check_output_dir`); a mismatch or a
    damaged finished stage is a `RecipeError`. Without ``tasks`` (a dry run: no tokenizer, so no
    prepared data, and possibly another machine than the run's) the task data and the
    hardware-dependent keys (use_cpu, bf16) are not compared."""
    from slice_trl.models import integrity
    from slice_trl.trainer import stages

    m = recipe.model
    names = [s.display_name for s in recipe.task_specs]
    fp = integrity.run_fingerprint(recipe.training, recipe.lora_config(),
                                   integrity.model_identity(m.model_name_or_path, m.model_revision), tasks, names,
                                   model_args=m)
    out = recipe.training.output_dir
    sections = None if tasks is not None else ("base_model", "lora", "model", "training", "task_names")
    skip = () if tasks is not None else ("use_cpu", "bf16")
    try:
        state = integrity.check_output_dir(out, fp, recipe.training.resume, sections=sections, skip=skip)
        if state == "resume":
            stages.check_finished(out, names)
    except ValueError as err:  # RunMismatchError, DamagedStageError
        raise RecipeError(str(err)) from None
    return state


def _dry_run_tasks(recipe: Recipe) -> tuple[dict, list[str]]:
    """Every local task file read, split and (when the model's tokenizer files are on this machine)
    fitted to max_length as the run will (`slice_trl.models.loading.data_tokenizer`: its files read
    as data): ``({name: Task}, notes on what was not checked)``. Bad data, or a max_length that no
    example fits, is a `RecipeError`."""
    from slice_trl.models.loading import data_tokenizer

    m, notes = recipe.model, []
    tokenizer = data_tokenizer(m.model_name_or_path) if recipe.training.max_length is not None else None
    if tokenizer is None and recipe.training.max_length is not None:
        notes.append(f"max_length={recipe.training.max_length}: not checked against the task data (the tokenizer of "
                     f"{m.model_name_or_path!r} is not a local file here); a real run fits every example first")
    tasks = recipe.load_tasks(tokenizer, local_only=True)  # the run's own message when no example fits
    notes += [f"task {s.display_name!r} (dataset_id={s.dataset_id}): its data is read from the Hub on a real run, "
              "not by --dry-run" for s in recipe.task_specs if s.dataset_id]
    return {t.name: t for t in tasks}, notes


def dry_run_report(recipe: Recipe) -> tuple[list[str], list[str]]:
    """``--dry-run``: every check of a real run that needs no model weights and runs no code the
    recipe points to (the checks above, each local task file read, split and length-fitted,
    output_dir's previous run), then what the run would do. Returns ``(lines to print, checks not
    made here)``: each of the latter is printed as one ``not checked:`` line, and the command
    exits 3 when there is any. Raises `RecipeError` on the first problem."""
    from slice_trl.evaluation.schedule import task_evaluations

    unchecked = check_recipe(recipe, dry_run=True)
    loaded, task_notes = _dry_run_tasks(recipe)
    unchecked += task_notes
    state = check_previous_run(recipe)
    n_tasks = len(recipe.task_specs) + len(recipe.missing_data)  # tasks without local data are listed below
    ev = recipe.training.evaluation
    lines = [f"Recipe OK: {n_tasks} tasks, init={recipe.training.init.method}, "
             f"model={recipe.model.model_name_or_path}, output_dir={recipe.training.output_dir}",
             f"Evaluation: {task_evaluations(n_tasks, ev)} task evaluations of up to {ev.max_samples} examples "
             f"(every={ev.every}, score_upcoming={ev.score_upcoming}, score_base={ev.score_base})"]
    notes = []
    for i, s in enumerate(recipe.task_specs):
        where = f"path={s.path}" if s.path else f"dataset_id={s.dataset_id}" if s.dataset_id else ""
        task = loaded.get(s.display_name)
        sizes = f", train {len(task.train)}, eval {len(task.eval)}, metric {task.metric}" if task else ""
        lines.append(f"  {i + 1}. {s.display_name}: source={s.source} {where}{sizes}".rstrip())
        notes += [f"{s.display_name}: {n}" for n in (task.info.get("notes", []) if task else [])]
    if recipe.missing_data:
        lines.append(f"Task data not on this machine ({len(recipe.missing_data)}); a real run needs it (set --data_dir):")
        lines += [f"  {m}" for m in recipe.missing_data]
        unchecked.append(f"the data of the {len(recipe.missing_data)} tasks listed under 'Task data not on this "
                         "machine' (read and split on a real run)")
    lines.append(f"output_dir: {OUTPUT_STATES[state]}"
                 + (" (task data is compared with the previous run's on a real run)" if state == "resume" else ""))
    return lines + [f"note: {note}" for note in notes], unchecked
