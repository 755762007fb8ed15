"""What `python -m slice_trl.run` prints.

Default (quiet): one progress bar per phase (G_cur, G_prev, train, eval) and only on a terminal,
one line per task as it is loaded (sizes, metric and why), one line per finished stage (its
scores and whether SLICE's projection fired), R once at the end; warnings and errors of every
library still show (in a launched run on rank 0; the other ranks print errors only). The
libraries' own progress bars (datasets' map/filter, weight loading and saving), their INFO logs
and the Trainer's per-step log dicts are off. ``--verbose`` (`configure(verbose=True)`) leaves
every library as it is. The Python API is untouched unless `configure` is called.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from slice_trl.utils.registry import initializers

_state = {"quiet": False}

VERBOSE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_FORMAT = "%(asctime)s %(message)s"


def configure(verbose: bool) -> None:
    """Set up logging (and, when quiet, silence the libraries' progress bars and INFO logs)."""
    _state["quiet"] = not verbose
    if verbose:
        logging.basicConfig(level=logging.INFO, format=VERBOSE_FORMAT)
        return
    logging.basicConfig(level=logging.WARNING, format=QUIET_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger("slice_trl").setLevel(logging.INFO)
    # library notices of no use to a user of the recipe runner (deprecations inside transformers)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # DeepSpeed (installed with the dev extras) announces on every process that it fell back to the CPU
    logging.getLogger("DeepSpeed").addFilter(lambda r: not r.getMessage().startswith("Setting accelerator to CPU"))
    if os.environ.get("RANK", "0") != "0":  # a launched run prints what one process prints: rank 0 speaks
        logging.getLogger().setLevel(logging.ERROR)
        logging.getLogger("slice_trl").setLevel(logging.ERROR)
        warnings.simplefilter("ignore")
    import datasets
    import huggingface_hub
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_warning()
    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()


def is_quiet() -> bool:
    return _state["quiet"]


def bars_enabled() -> bool:
    """Progress bars of the continual loop: off when quiet and stderr is not a terminal (a log
    file would collect every redraw of the bar)."""
    return not (_state["quiet"] and not sys.stderr.isatty())


def quiet_trainer(trainer) -> None:
    """Quiet mode: the Trainer's step logs are not printed (they stay in its log history and in
    report_to integrations); its train progress bar stays on a terminal."""
    if not is_quiet():
        return
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class _BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass  # the bar only: the per-step dicts would interleave with it

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if bars_enabled() and not trainer.args.disable_tqdm:
        trainer.add_callback(_BarOnly())


def stage_line(record: dict, n_stages: int) -> str:
    """One line for a finished stage: its task, init method and what SLICE's projection did,
    and the scores (x100) of every task seen so far."""
    init = record.get("init") or {}
    surgery = init.get("surgery")
    what = str(init.get("method", "?"))
    if surgery and surgery.get("cosine") is not None:
        cos, gamma = surgery.get("cosine"), surgery.get("gamma")
        detail = f"cos {cos:+.3f}, gamma {gamma:.3f}" if isinstance(cos, float) and isinstance(gamma, float) else ""
        what += f", projection {'fired' if surgery.get('fired') else 'did not fire'}"
        what += f" ({detail})" if detail else ""
    elif initializers.trait(init.get("method"), "has_gate", False):  # LoRA-GA & co. never project (no clause)
        c = (surgery or {}).get("c")
        why = "no earlier task" if record.get("stage") == 1 else "c = 0" if c == 0 else "no replay batches"
        what += f", projection not applied ({why})"
    names = list(record.get("scores", {}))  # seen tasks in order, then the next one (evaluation.score_upcoming)
    after = names[names.index(record.get("task")) + 1:] if record.get("task") in names else []
    scores = "  ".join(f"{name} {100 * s:.1f}" + (" (before training)" if name in after else "")
                       for name, s in record.get("scores", {}).items() if s is not None)
    general = ""
    if record.get("general"):  # GP/IP measured after this stage (the last one, or every one when asked)
        general = f"  {change_text(record['general'])}"
    return f"stage {record.get('stage')}/{n_stages} {record.get('task')} [{what}]  scores x100: {scores}{general}"


def change_text(g: dict) -> str:
    """"GP 43.8 (base 45.0, -1.2)  IP 47.1 (base 46.0, +1.1)" (x100) of a GP/IP summary (the dict
    `slice_trl.evaluation.general.summarize` returns; "base"/"change" None without base scores)."""
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


def duration(seconds: float) -> str:
    """"42 s", "3 min 20 s", "1 h 02 min"."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def seconds_left(records: list[dict], n_stages: int) -> float | None:
    """Estimate of the time the stages after ``records`` (the finished ones, in order) will take,
    from their ``timings``: a stage costs its fixed part (init, train, save/merge, GP/IP: the mean
    over finished stages) plus the seen-task evaluation, which grows with the number of tasks it
    scores (stage k scores k tasks: the mean seconds per scored task times k). None before any
    stage has finished."""
    timed = [r for r in records if r.get("timings")]
    if not timed:
        return None
    fixed = sum(sum(v for k, v in r["timings"].items() if k not in ("eval", "strategy_step_hooks"))
                for r in timed) / len(timed)
    per_task = sum(r["timings"].get("eval", 0.0) / r["stage"] for r in timed) / len(timed)
    return sum(fixed + per_task * k for k in range(len(records) + 1, n_stages + 1))


def progress_line(records: list[dict], n_stages: int, elapsed: float) -> str:
    """The overall line after each stage: "progress: 2/15 stages done, 3 min 20 s elapsed, about
    41 min 5 s left" (``elapsed``: seconds since this process started the sequence)."""
    line = f"progress: {len(records)}/{n_stages} stages done, {duration(elapsed)} elapsed"
    left = seconds_left(records, n_stages)
    if len(records) < n_stages and left is not None:
        line += f", about {duration(left)} left"
    return line
