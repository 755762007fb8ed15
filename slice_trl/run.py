"""Run a continual sequence from a recipe:

    python -m slice_trl.run RECIPE.yaml [--key value ...] [--section.key value ...]
    accelerate launch [--config_file accelerate_configs/...] -m slice_trl.run RECIPE.yaml ...

Flags: ``--dry-run`` (validate the recipe, read the task data and compare with the run already
in ``output_dir``, load no model and run no code the recipe points to; exits 0 when every check
passed, 2 on a problem, 3 when it passed but some checks could not be made here, each printed as
a ``not checked:`` line), ``--push-only`` (publish the
finished stages of ``output_dir`` that are not on the Hub yet, and task splits whose push failed;
exits 1 when something is still not on the Hub), ``--overwrite`` (start over: move the whole
previous content of ``output_dir`` aside to ``<output_dir>.replaced-<UTC time>/``, only when it holds a
slice-trl run; the same as ``--resume false``), ``--verbose`` (library logs and progress bars as they come),
``--help`` (every recipe key with its help text), ``--list-sequences`` (every named benchmark
sequence a recipe can give as ``sequence:``, its tasks and where its data comes from).

A rerun in the same ``output_dir`` resumes only when everything that determines the results
(model, LoRA, training and sub-configs, task data) is unchanged (`slice_trl.models.integrity`);
otherwise it stops before the model loads, naming each differing key.

Order of work: the whole recipe is validated, then the tokenizer is loaded and the tasks are
built (data errors surface here), and only then the model is loaded.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

# The recipe layer imports trl (and so transformers, huggingface_hub, datasets) lazily: a recipe's
# ``env:`` (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, ...: `ENV_ALLOWED`) must be in os.environ before those libraries
# are imported, since they read these variables once, at import (`load_recipe` applies it first).
if TYPE_CHECKING:
    from slice_trl.cli.recipe import Recipe


def __getattr__(name):
    if name in ("Recipe", "RecipeError", "load_recipe"):
        from slice_trl.cli import recipe as _recipe

        return getattr(_recipe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

logger = logging.getLogger("slice_trl")

USAGE = ("usage: python -m slice_trl.run RECIPE.yaml [--dry-run] [--push-only] [--overwrite] [--verbose] "
         "[--key value ...] [--section.key value ...] | --list-sequences")


def _split_flags(argv: list[str]) -> tuple[list[str], set[str]]:
    flags = {"--dry-run", "--push-only", "--help", "-h", "--overwrite", "--verbose", "--list-sequences"}
    return [a for a in argv if a not in flags], {a for a in argv if a in flags}


def _public_recipe(recipe: Recipe) -> dict:
    """The recipe as kept with the run's facts: credentials (hub_token, ``hf_...`` strings, the resolved
    HF token) are redacted, as on the Hub."""
    from slice_trl.hub.redaction import known_secrets, redact

    return redact(recipe.raw, known_secrets(None))


def _publisher(recipe: Recipe):
    """after-stage hook: push every finished stage not yet on the Hub (never raises)."""
    if not recipe.run.push_repo_id:
        return None
    from slice_trl import hub

    def publish(output_dir):
        report = hub.push_pending(output_dir, recipe.run.push_repo_id, private=recipe.run.push_private,
                                  dataset_repo_id=recipe.run.push_dataset_repo_id)
        if not report.ok:
            logger.warning("Hub push incomplete:\n%s\nIt will be retried by the next push or by "
                           "`python -m slice_trl.run RECIPE --push-only`.", report)
        return report

    return publish


def _is_main_process() -> bool:
    """Rank 0 of a launched job (torchrun/accelerate set RANK), before accelerate is initialised."""
    return os.environ.get("RANK", "0") == "0"


def run(recipe: Recipe, dry_run: bool = False, push_only: bool = False):
    """Execute a validated recipe. Returns the `ContinualTrainOutput` (for a dry run, the list of
    checks it could not make here; the `slice_trl.hub.PushReport` for push-only)."""
    from slice_trl.utils import console
    from slice_trl.cli import preflight

    if dry_run:
        lines, unchecked = preflight.dry_run_report(recipe)
        print("\n".join(lines + [f"not checked: {note}" for note in unchecked]))
        return unchecked
    publish = _publisher(recipe)
    if push_only:
        preflight.check_push_only(recipe)
        report = publish(recipe.training.output_dir)
        print(report)
        return report

    from slice_trl.models.loading import load_model_and_tokenizer
    from slice_trl.trainer.continual_sft_trainer import ContinualSFTTrainer

    preflight.check_recipe(recipe)
    if not recipe.training.resume:  # --overwrite: a folder that holds no slice-trl run is refused before any load
        preflight.check_previous_run(recipe)
    m = recipe.model
    trust = recipe.training.trust_remote_code
    tokenizer = recipe.load_tokenizer()
    tasks = recipe.load_tasks(tokenizer)
    state = preflight.check_previous_run(recipe, tasks)  # nothing in output_dir is written before this
    if state == "replace" and _is_main_process():
        from slice_trl.models.integrity import move_aside

        logger.warning("resume=false (--overwrite): moved the previous content of %s to %s",
                       recipe.training.output_dir, move_aside(recipe.training.output_dir))
    for task in tasks:
        fit = {k: v for k, v in task.info.items() if k in ("shortened", "dropped")}
        why = f" ({task.info['metric_reason']})" if task.info.get("metric_reason") else ""
        logger.info("task %s: %d train / %d eval, metric %s%s %s%s", task.name, len(task.train), len(task.eval),
                    task.metric, why, fit or "", "".join(f"; note: {n}" for n in task.info.get("notes", [])))
    if recipe.run.push_dataset_repo_id:
        from slice_trl import hub

        try:
            hub.push_task_splits(tasks, recipe.run.push_dataset_repo_id, private=recipe.run.push_private)
        except Exception as err:  # publishing never costs the run; the splits are kept for a retry
            from slice_trl.hub.redaction import describe, known_secrets

            reason = describe(err, known_secrets(None))
            kept = hub.save_pending_splits(tasks, recipe.training.output_dir, reason)
            logger.warning("Could not push the task splits to %s: %s. They are kept in %s; the push after each "
                           "stage (or `--push-only`) retries them.", recipe.run.push_dataset_repo_id, reason, kept)

    model, _ = load_model_and_tokenizer(m.model_name_or_path, dtype=m.dtype or "float32", trust_remote_code=trust,
                                        revision=m.model_revision, attn_implementation=m.attn_implementation)
    trainer = ContinualSFTTrainer(
        model=model, args=recipe.training, tasks=tasks, peft_config=recipe.lora_config(), processing_class=tokenizer,
        run_info={"base_model": m.model_name_or_path, "base_model_revision": m.model_revision,
                  "recipe": _public_recipe(recipe)}, publisher=publish, model_args=m,
    )
    console.quiet_trainer(trainer)
    out = trainer.train()
    if trainer.accelerator.is_main_process:
        print(out.results.table())
        if out.general:
            print(console.summary_line(out.general))
        folder = trainer.run_folder
        print(f"results: {folder.results_file}, heatmap: {folder.heatmap}")
    return out


def help_text() -> str:
    """``--help``: every recipe key with its help text, grouped as in a recipe."""
    from dataclasses import field, fields

    from slice_trl.cli.recipe import RunArguments, model_config_cls, section_classes
    from slice_trl.configs.config import ContinualSFTConfig
    from slice_trl.tasks import TaskSpec

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

    block("Script (RunArguments):", RunArguments)
    block("Model and LoRA (trl.ModelConfig):", model_config_cls())
    for name, cls in section_classes().items():
        block(f"Section '{name}:' ({cls.__name__}), override with --{name}.KEY VALUE:", cls, prefix=f"{name}.")
    block("Each entry of 'tasks:' (TaskSpec):", TaskSpec, prefix="tasks[].")
    block("Training of every stage (ContinualSFTConfig = trl.SFTConfig + the continual loop):", ContinualSFTConfig)
    return "\n".join(lines)


def _interrupted(recipe: Recipe | None) -> str:
    """The one line printed on Ctrl-C: how many stages are finished on disk (an unfinished one restarts)."""
    if recipe is None:
        return "interrupted while reading the recipe; nothing was written."
    from slice_trl.utils.run_folder import RunFolder

    out = recipe.training.output_dir
    try:
        done = len(RunFolder(out).finished_stages())
    except (OSError, ValueError):
        done = "?"
    return (f"interrupted: {done} of {len(recipe.task_specs)} stages finished in {out}; rerun the same command "
            "to resume.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, flags = _split_flags(argv)
    if "--list-sequences" in flags:
        from slice_trl.tasks.sequences import describe

        print(describe())
        return 0
    if flags & {"--help", "-h"} or not rest:
        print(USAGE)
        print(__doc__)
        print(help_text())
        return 0 if flags & {"--help", "-h"} else 2
    if {"--dry-run", "--push-only"} <= flags:
        print("error: --dry-run and --push-only together: --dry-run checks a recipe, --push-only publishes a "
              "finished run; give one of them.", file=sys.stderr)
        return 2
    path, overrides = (rest[0], rest[1:]) if not rest[0].startswith("--") else (None, rest)
    if "--overwrite" in flags:  # start over: the old content of output_dir is moved aside first
        overrides = [*overrides, "--resume", "false"]
    from slice_trl.cli.recipe import RecipeError, load_recipe

    def configure():  # imports the Hub libraries: load_recipe calls it once the recipe's env is applied
        from slice_trl.utils.console import configure

        configure(verbose="--verbose" in flags)

    recipe = None
    try:
        # --dry-run and --push-only need neither the task data nor the training hardware on this machine
        recipe = load_recipe(path, overrides, for_this_machine=not flags & {"--dry-run", "--push-only"},
                             before_libraries=configure)
        out = run(recipe, dry_run="--dry-run" in flags, push_only="--push-only" in flags)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what is on disk and how to go on, no traceback
        print(_interrupted(recipe), file=sys.stderr)
        return 130
    if "--push-only" in flags and not out.ok:
        return 1  # something is still not on the Hub: scripts must see it
    if "--dry-run" in flags and out:
        return 3  # passed, but the checks printed as "not checked:" could not be made here
    return 0


if __name__ == "__main__":
    sys.exit(main())
