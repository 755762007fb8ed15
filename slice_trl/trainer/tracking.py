"""Experiment tracking of a whole continual run through transformers' ``report_to`` integrations.

The Trainer builds one integration callback per ``report_to`` name (`TensorBoardCallback`,
`TrackioCallback`, `WandbCallback`, `MLflowCallback`, ...). Left alone, the continual loop's one
``SFTTrainer.train()`` per stage would start each of them again at every stage, with steps from 1.
`ContinualTracking` takes them out of the Trainer's callback list and puts one `SequenceCallback`
in their place, which

- starts them once per process (`ContinualTracking.start`) and ends them once, after the last stage,
  so a sequence is ONE tracker run (one TensorBoard log dir, one trackio/wandb/mlflow run);
- shifts ``state.global_step`` by the steps logged before the stage, so stage k's first optimiser
  step follows stage k-1's last;
- gives them a copy of the args whose ``to_dict()`` also names the task sequence, with the
  config's sections flattened (``init.method``, ``init.c``, ``strategy.name``, ``tasks``), so runs
  can be filtered by them.

The continual quantities go through the same callbacks' ``on_log`` at the step where they become
known, so every backend receives them (transformers' ``rewrite_logs`` names them): the base row R_0
and the base GP/IP at step 0, the initialiser's record when a stage starts (``train/init/...``),
every seen task's score and every entry of `ResultsMatrix.summary` after each stage
(``eval/<task>``, ``eval/AP``, ...), and at the end ``eval/final/...``; R as a table and the heatmap
as an image go to the trackers whose client takes media (TensorBoard, trackio, wandb, mlflow).

Resume: the ``"tracking"`` entry of the run's facts keeps the run's identity (TensorBoard log dir,
run name, wandb and mlflow run ids) and the last step logged, written before each log reaches a tracker; a
resumed run continues the same tracker run after that step (so a stage killed half-way keeps its
points and its rerun follows them: no step is logged twice) and never logs a finished stage again.
Only the main process logs and writes (the integrations themselves check ``is_world_process_zero``).
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import integration_utils as hf_integrations

from slice_trl.utils import console
from slice_trl.configs.config import report_to_names as _names
from slice_trl.configs.config import validate_report_to  # noqa: F401  (re-exported: checked where the config is)

logger = logging.getLogger(__name__)

TRACKING = "tracking"  # the key of the run's facts (`RunFolder.run_file`)
# report_to name -> (module transformers checks for, the pip command that installs it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "trackio": ("trackio", "trackio"),
            "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow"), "comet_ml": ("comet_ml", "comet_ml"),
            "neptune": ("neptune", "neptune"), "clearml": ("clearml", "clearml"), "dvclive": ("dvclive", "dvclive"),
            "swanlab": ("swanlab", "swanlab"), "codecarbon": ("codecarbon", "codecarbon"),
            "dagshub": ("dagshub", "dagshub mlflow"), "flyte": ("flytekit", "flytekit flytekitplugins-deck-standard"),
            "azure_ml": ("azureml", "azureml-core"), "kubeflow": ("kubeflow", "kubeflow-training")}


def check_installed(report_to) -> None:
    """Every named tracker's package is importable here; raises ``ValueError`` with the pip command."""
    from importlib.util import find_spec

    for name in _names(report_to):
        module, pip = PACKAGES.get(name, (None, None))
        if module is not None and find_spec(module) is None:
            raise ValueError(f"report_to={name!r}: {module} is not installed here; install it with `pip install "
                             f"{pip}`, or remove {name!r} from report_to.")


def _flat_config(args, task_names: list[str]) -> dict:
    """args.to_dict() with the sections flattened to dotted keys, plus the task sequence."""
    out = {}
    for key, value in args.to_dict().items():
        if isinstance(value, dict) and key in ("init", "replay", "evaluation", "strategy"):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    out.setdefault("strategy.name", None)
    return {**out, "tasks": ", ".join(task_names), "num_tasks": len(task_names)}


class _TrackioAtStep:
    """The trackio module as `TrackioCallback` sees it, with ``log`` at the continual step (the
    callback gives none, so trackio would count its own steps)."""

    def __init__(self, module, step):
        self._module, self._step = module, step

    def __getattr__(self, name):
        return getattr(self._module, name)

    def log(self, metrics, step=None):
        self._module.log(metrics, step=self._step() if step is None else step)


class SequenceCallback(TrainerCallback):
    """The report_to integrations of a continual run, as one callback (see the module docstring).
    ``offset``: optimiser steps logged before the current stage; ``last_step``: the highest step
    any log reached; ``on_step``: called with each step before a log is forwarded (persistence)."""

    def __init__(self, integrations: list, args_view, on_step):
        self.integrations, self.args_view, self.on_step = integrations, args_view, on_step
        self.offset = self.last_step = 0
        self.started = False
        self._step = 0
        for cb in integrations:
            if isinstance(cb, hf_integrations.TrackioCallback):
                cb._trackio = _TrackioAtStep(cb._trackio, lambda: self._step)

    def _shifted(self, state, step: int | None = None):
        shifted = copy.copy(state)
        shifted.global_step = self._step = state.global_step + self.offset if step is None else step
        return shifted

    def forward(self, event: str, args, state, control, step: int | None = None, **kwargs):
        shifted = self._shifted(state, step)
        for cb in self.integrations:
            getattr(cb, event)(self.args_view, shifted, control, **kwargs)

    def on_train_begin(self, args, state, control, **kwargs):  # a stage starts: after the last step logged
        self.offset = self.last_step

    def on_train_end(self, args, state, control, **kwargs):  # the sequence ends in ContinualTracking.finish
        pass

    def on_log(self, args, state, control, logs=None, step: int | None = None, **kwargs):
        step = state.global_step + self.offset if step is None else step
        self.last_step = max(self.last_step, step)
        if state.is_world_process_zero:
            self.on_step(self.last_step)
        self.forward("on_log", args, state, control, step=step, logs=logs, **kwargs)


def _forwarding(event):
    def method(self, args, state, control, **kwargs):
        self.forward(event, args, state, control, **kwargs)
    return method


for _event in ("on_epoch_begin", "on_epoch_end", "on_step_begin", "on_pre_optimizer_step", "on_optimizer_step",
               "on_substep_end", "on_step_end", "on_evaluate", "on_predict", "on_save", "on_prediction_step",
               "on_push_begin"):
    setattr(SequenceCallback, _event, _forwarding(_event))


def _scalars(prefix: str, values: dict) -> dict:
    """{prefix + key: number} of a dict's numbers (bools as 0/1, nested dicts as key/sub); None and
    non-numbers are left out."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_scalars(f"{prefix}{key}/", value))
        elif isinstance(value, (bool, int, float)):
            out[f"{prefix}{key}"] = float(value)
    return out


def _general(general: dict | None) -> dict:
    """eval_GP, eval_IP and their change from the base model (GP/IP summary of a stage)."""
    if not general:
        return {}
    out = {f"eval_{k}": general[k] for k in ("GP", "IP") if general.get(k) is not None}
    out.update({f"eval_{k}_change": v for k, v in (general.get("change") or {}).items() if v is not None})
    return out


def init_logs(init: dict) -> dict:
    """The initialiser's record as log keys: the SLICE gate (cosine, gamma, fired, fraction of
    negative modules, number of corrected modules in per-module mode) and seconds per phase."""
    surgery = init.get("surgery") or {}
    out = _scalars("init/", {k: surgery.get(k) for k in ("cosine", "gamma", "fired", "frac_negative_modules")})
    if surgery.get("fired_modules") is not None:
        out["init/fired_modules"] = float(len(surgery["fired_modules"]))
    out.update(_scalars("init/seconds/", init.get("timings") or {}))
    return out


class ContinualTracking:
    """Tracking and console progress of one `ContinualSFTTrainer` (see the module docstring)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.t0 = time.perf_counter()
        # every integration the Trainer built from report_to, and any the user passed in callbacks=
        kinds = tuple(set(hf_integrations.INTEGRATION_TO_CALLBACK.values()))
        handler = trainer.callback_handler
        integrations = [cb for cb in handler.callbacks if isinstance(cb, kinds)]
        previous = None
        if trainer.args.resume and trainer.run_folder.run_file.is_file():
            previous = trainer.run_folder.read_run().get(TRACKING)
        self.entry = previous or {}
        self.callback = None
        if not integrations:
            return
        for cb in integrations:
            handler.remove_callback(cb)
        args_view = copy.copy(trainer.args)
        flat = _flat_config(trainer.args, [t.name for t in trainer.tasks])
        args_view.to_dict = lambda: dict(flat)
        default_name = f"{trainer.run_folder.root.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        args_view.run_name = self.entry.get("run_name") or trainer.args.run_name or default_name
        self.entry.update(report_to=list(trainer.args.report_to), run_name=args_view.run_name)
        self.entry.setdefault("last_step", 0)
        self.callback = SequenceCallback(integrations, args_view, self._save_step)
        self.callback.last_step = self.entry["last_step"]
        handler.add_callback(self.callback)
        trainer.run_info[TRACKING] = self.entry  # written with the run's facts

    @property
    def main(self) -> bool:
        return self.trainer.accelerator.is_main_process

    def _client(self, name: str):
        """The wrapped integration callback of that transformers class (e.g. "TensorBoardCallback")."""
        kind = getattr(hf_integrations, name)
        return next((cb for cb in (self.callback.integrations if self.callback else ()) if isinstance(cb, kind)), None)

    def _save_step(self, step: int) -> None:
        if step != self.entry.get("last_step"):
            self.entry["last_step"] = step
            self._persist()

    def _persist(self) -> None:
        run = self.trainer.run_folder
        if self.main and run.run_file.is_file():
            run.write_run({**run.read_run(), TRACKING: self.entry})

    def _log(self, logs: dict, step: int) -> None:
        if self.callback is not None and self.main and logs:
            trainer = self.trainer
            self.callback.on_log(trainer.args, trainer.state, trainer.control, logs=logs, step=step)

    # ------------------------------------------------------------------ the loop's calls
    def start(self, results, base: dict | None, general: dict | None, first_stage: int) -> None:
        """Start the trackers (once per process, on the run recorded in the run folder when resuming) and
        log what the base model scored at step 0, unless this tracker run has it already."""
        if self.callback is None or self.entry.get("final_logged"):  # a finished run, rerun: nothing new to log
            return
        trainer, cb = self.trainer, self.callback
        env = self._resume_env()
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            cb.forward("on_train_begin", trainer.args, trainer.state, trainer.control, step=cb.last_step,
                       model=trainer.model, processing_class=trainer.processing_class)
        finally:
            for k, v in old.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        cb.started = True
        self._record_identity()
        if not self.entry.get("base_logged") and first_stage == 0:
            logs = {f"eval_{n}": s for n, s in (base or {}).get("scores", {}).items() if s is not None}
            self._log({**logs, **_general(general)}, 0)
            self.entry["base_logged"] = True
            self._persist()

    def _resume_env(self) -> dict:
        env = {}
        if self._client("TensorBoardCallback") is not None and self.entry.get("tensorboard_dir"):
            where = Path(self.entry["tensorboard_dir"])
            self._client("TensorBoardCallback").logging_dir = str(where if where.is_absolute()
                                                                  else self.trainer.run_folder.root / where)
        if self._client("WandbCallback") is not None:
            run_id = self.entry.get("wandb_run_id") or os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
            env.update(WANDB_RUN_ID=run_id, WANDB_RESUME="allow")
            self.entry["wandb_run_id"] = run_id
        if self._client("MLflowCallback") is not None and self.entry.get("mlflow_run_id"):
            env["MLFLOW_RUN_ID"] = self.entry["mlflow_run_id"]
        return env

    def _record_identity(self) -> None:
        tb = self._client("TensorBoardCallback")
        if tb is not None and tb.logging_dir:
            where = Path(tb.logging_dir).resolve()
            out = self.trainer.run_folder.root.resolve()
            self.entry["tensorboard_dir"] = str(where.relative_to(out) if where.is_relative_to(out) else where)
        trackio = self._client("TrackioCallback")
        if trackio is not None:
            self.entry["trackio_project"] = self.trainer.args.project
        mlflow = self._client("MLflowCallback")
        if mlflow is not None and getattr(mlflow, "_ml_flow", None) is not None and mlflow._ml_flow.active_run():
            self.entry["mlflow_run_id"] = mlflow._ml_flow.active_run().info.run_id
        self._persist()

    def stage_begin(self, t: int, report) -> None:
        """The initialiser's record, at the step the stage starts from; once per stage and tracker
        run (a stage killed and rerun is initialised identically: same seed, same data)."""
        if self.callback is not None and t + 1 not in self.entry.setdefault("init_logged", []):
            self._log(init_logs(report.to_dict()), self.callback.last_step)
            self.entry["init_logged"].append(t + 1)
            self._persist()

    def stage_end(self, t: int, record: dict, results, records: list[dict]) -> None:
        """Main process, once stage t is scored: its scores, R's summary and GP/IP (when measured)
        at the stage's last step; then the console's stage line and progress line."""
        if self.callback is not None:
            logs = {f"eval_{n}": s for n, s in record["scores"].items() if s is not None}
            logs.update(_scalars("eval_", results.summary()))  # every summary entry (None: not available yet)
            self._log({**logs, **_general(record.get("general"))}, self.callback.last_step)
        n = len(self.trainer.tasks)
        logger.info(console.stage_line(record, n))
        logger.info(console.progress_line(records, n, time.perf_counter() - self.t0))

    def finish(self, results, general: dict | None, heatmap: Path) -> None:
        """The run's summary (``eval/final/...``), R as a table and the heatmap as an image where
        the tracker takes media, then the trackers are ended (once)."""
        cb = self.callback
        if cb is None or not cb.started:
            return
        step = cb.last_step
        if self.main and results.completed:
            summary = _scalars("eval_final/", {**results.summary(), **(
                {k: general.get(k) for k in ("GP", "IP")} if general else {})})
            self._log(summary, step)
            self._media(results, heatmap, step)
            self.entry["final_logged"] = True
            self._persist()
        cb.forward("on_train_end", self.trainer.args, self.trainer.state, self.trainer.control, step=step,
                   model=self.trainer.model, processing_class=self.trainer.processing_class)

    def _media(self, results, heatmap: Path, step: int) -> None:
        columns = ["after", *results.task_names]
        rows = [["base", *results.base]] if results.base is not None else []
        rows += [[f"stage {i + 1} ({results.task_names[i]})", *results.matrix[i]] for i in range(results.completed)]
        tb = self._client("TensorBoardCallback")
        if tb is not None and tb.tb_writer is not None:
            cells = [[v if isinstance(v, str) else "" if v is None else f"{100 * v:.1f}" for v in row]
                     for row in [columns, ["---"] * len(columns), *rows]]
            table = "\n".join("| " + " | ".join(row) + " |" for row in cells)
            tb.tb_writer.add_text("results/R", "R (x100)\n\n" + table, step)
            if heatmap.is_file():
                import numpy as np
                from PIL import Image

                tb.tb_writer.add_image("results/heatmap", np.asarray(Image.open(heatmap).convert("RGB")), step,
                                       dataformats="HWC")
            tb.tb_writer.flush()
        trackio = self._client("TrackioCallback")
        if trackio is not None and trackio._initialized:
            media = {"results/R": trackio._trackio.Table(columns=columns, data=rows)}
            if heatmap.is_file():
                media["results/heatmap"] = trackio._trackio.Image(str(heatmap), caption="R (x100)")
            trackio._trackio.log(media, step=step)
        wandb = self._client("WandbCallback")
        if wandb is not None and getattr(wandb._wandb, "run", None) is not None:
            media = {"results/R": wandb._wandb.Table(columns=columns, data=rows), "train/global_step": step}
            if heatmap.is_file():
                media["results/heatmap"] = wandb._wandb.Image(str(heatmap))
            wandb._wandb.log(media)
        mlflow = self._client("MLflowCallback")
        if mlflow is not None and getattr(mlflow, "_ml_flow", None) is not None and mlflow._ml_flow.active_run():
            mlflow._ml_flow.log_dict({"columns": columns, "rows": rows}, "results/R.json")
            if heatmap.is_file():
                mlflow._ml_flow.log_artifact(str(heatmap), "results")
