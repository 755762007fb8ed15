"""`ContinualSFTTrainer`: TRL's SFTTrainer, run over a sequence of tasks.

For each task t (0-indexed in code, "stage t+1" on disk):

1. `build_replay_sample`   fresh seeded sample of the earlier tasks' train splits
2. `initialize_adapter`    fresh LoRA adapter, then the initialiser (SLICE by default)
3. `train_stage`           plain `SFTTrainer.train()` with a fresh optimizer, scheduler and state
4. `finish_stage`          save the adapter (raw + converted), merge it into the base
5. `evaluate_seen_tasks`   batched greedy generation on every seen task -> row t of R
6. the stage record is written atomically before stage t+1 starts

`evaluate_general_ability` scores GP/IP (lm-eval): the base model once before stage 1, and
after the last stage (after every stage with ``evaluation.general_every_stage``).

Each numbered method is meant to be overridden to change one thing. ``train()`` runs the whole
sequence (resuming from ``output_dir`` if stages are already finished there) and returns a
`ContinualTrainOutput`. A recipe without a strategy runs `NoStrategy` (every hook a no-op); the
private TRL/transformers API the loop needs is reached only through `slice_trl.trainer.trl_private`.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Dataset, concatenate_datasets
from transformers import set_seed
from trl import SFTTrainer

from slice_trl.utils import console, distributed
from slice_trl.utils.run_folder import RunFolder, StageFolder
from slice_trl.utils.jsonio import read_json
from slice_trl.models import integrity
from slice_trl.trainer import stages, trl_private
from slice_trl.trainer.batching import sample_batches
from slice_trl.configs.config import ContinualSFTConfig
from slice_trl.evaluation import evaluate_general, evaluate_task, tasks_to_score
from slice_trl.initializers import InitReport, build_initializer, warn_if_far_from_paper
from slice_trl.models.lora import ADAPTER
from slice_trl.trainer.replay import ReplaySampleProvider, stage_seed
from slice_trl.evaluation.results import ResultsMatrix
from slice_trl.trainer.stages import merge_into_base  # noqa: F401  (re-exported: part of the trainer's API)
from slice_trl.strategies import StageContext, StepHooks, build_strategy
from slice_trl.tasks.base import Task, validate_tasks
from slice_trl.trainer.tracking import ContinualTracking

logger = logging.getLogger(__name__)

@dataclass
class ContinualTrainOutput:
    results: ResultsMatrix
    records: list[dict]
    general: dict | None = None


class ContinualSFTTrainer(SFTTrainer):
    """Continual LoRA fine-tuning over ``tasks`` with a data-driven initialiser before each task.

    Args:
        model: a plain `PreTrainedModel` (not a PeftModel): the base of the sequence.
        args: `ContinualSFTConfig`.
        tasks: ordered tasks (`slice_trl.tasks.base.Task`).
        peft_config: a `peft.LoraConfig`; a fresh adapter with this config is trained per task.
        processing_class: the tokenizer.
        initializer: callable (model, adapter_name, current_batches, previous_batches) ->
            `InitReport`; default built from ``args.init``.
        replay_provider: default `ReplaySampleProvider(args.replay)`.
        run_info: extra facts kept with the run's own (`RunFolder.run_file`): e.g. the recipe, the base model id.
        model_args: the `trl.ModelConfig` the model was loaded with (dtype, attention, ...): fingerprinted.
        publisher: optional callable(output_dir) run on the main process after each finished
            stage, and once more after GP/IP are written (e.g. `slice_trl.hub.push_pending`);
            it must not raise.
    """

    def __init__(self, model, args: ContinualSFTConfig, tasks: Sequence[Task], peft_config, processing_class,
                 initializer=None, replay_provider: ReplaySampleProvider | None = None, callbacks=None,
                 run_info: dict | None = None, publisher=None, model_args=None, **kwargs):
        from peft import LoraConfig, PeftModel

        if not isinstance(args, ContinualSFTConfig):
            raise TypeError(f"args must be a ContinualSFTConfig, got {type(args).__name__}.")
        if not isinstance(peft_config, LoraConfig):
            raise ValueError(f"peft_config must be a peft.LoraConfig (got {type(peft_config).__name__}): SLICE "
                             "initialises LoRA's A and B matrices.")
        if isinstance(model, PeftModel):
            raise ValueError("Pass the plain base model, not a PeftModel: the trainer attaches a fresh LoRA adapter "
                             "per task (merge your adapter first with merge_and_unload()).")
        validate_tasks(tasks)
        self.tasks = list(tasks)
        self.lora_config = copy.deepcopy(peft_config)
        self.initializer = initializer or build_initializer(args.init)
        self.replay_provider = replay_provider or ReplaySampleProvider(args.replay)
        self.run_info = dict(run_info or {})
        self.publisher = publisher
        self._stage = -1
        self._base_general = None  # the base model's GP/IP scores, see evaluate_general_ability
        # before anything is built or written: a resume must not mix two runs (integrity.py)
        self.fingerprint = self._fingerprint(model, args, model_args)
        state = integrity.check_output_dir(args.output_dir, self.fingerprint, args.resume, overwrite_hint="resume=False")
        if state == "restart" and distributed.rank_and_world()[0] == 0:  # no stage finished: nothing to keep
            integrity.discard_unfinished(args.output_dir)  # before the tracking reads the old run ids
            logger.info("%s held a run that finished no stage: starting it afresh", args.output_dir)
        # SFTTrainer wraps the model with peft_config and decides completion-only loss from the
        # first task's format; all tasks share that format (validated above).
        super().__init__(model=model, args=args, train_dataset=self.tasks[0].train, peft_config=peft_config,
                         processing_class=processing_class, callbacks=callbacks, **kwargs)
        self._prepared: dict[str, Dataset] = {self.tasks[0].name: self.train_dataset}
        self.stage_context = StageContext(tasks=self.tasks, prepared_train=lambda t: self.prepared_train(self.tasks[t]),
                                          collate=lambda rows: self.data_collator(rows),
                                          attach_adapter=self.attach_adapter, current_model=lambda: self.model)
        # the recipe's strategy, or `NoStrategy` (every hook a no-op) when it names none; refuses what cannot run
        self.strategy = build_strategy(args.strategy, trl_private.zero_stage(self))
        self.step_hooks = StepHooks(self.strategy, self.stage_context)  # pre_step/post_step, a TrainerCallback
        self.add_callback(self.step_hooks)
        self.tracking = ContinualTracking(self)  # report_to: one tracker run for the whole sequence
        warn_if_far_from_paper(self.model, ADAPTER, args.init)  # SFTTrainer attached the adapter: real scalings
        # The continual loop attaches its own adapter per stage: start from the plain base.
        trl_private.use_model(self, self.model.unload())

    # ------------------------------------------------------------------ helpers
    def _fingerprint(self, model, args, model_args=None) -> dict:
        """Everything that determines the results (`integrity.run_fingerprint`). The base model
        is named by run_info's "base_model"/"base_model_revision" when given (the CLI), else by
        the model's own name_or_path and commit hash."""
        name = self.run_info.get("base_model") or getattr(model, "name_or_path", None)
        revision = self.run_info.get("base_model_revision") or trl_private.commit_hash(model)
        base = integrity.model_identity(name, revision) if name else {"id": None, "revision": revision}
        if not name and not distributed.zero3_enabled():  # an in-memory model: identify it by its weights
            base["state_sha256"] = integrity.state_sha256(model)  # (ZeRO-3 shards differ between ranks)
        return integrity.run_fingerprint(args, self.lora_config, base, self.tasks, model_args=model_args)

    @property
    def run_folder(self) -> RunFolder:
        return RunFolder(self.args.output_dir)

    def stage_folder(self, t: int) -> StageFolder:
        return self.run_folder.stage(t, self.tasks[t].name)

    def prepared_train(self, task: Task) -> Dataset:
        """The task's train split tokenised by SFTTrainer's own preparation (cached)."""
        if task.name not in self._prepared:
            self._prepared[task.name] = self._prepare(task.train, f"{task.name}-train")
        return self._prepared[task.name]

    def _prepare(self, ds: Dataset, name: str) -> Dataset:
        return trl_private.prepare_dataset(self, ds, name)

    def _batches(self, ds: Dataset, n_batches: int, seed: int) -> list[dict]:
        cfg = self.args.init
        return sample_batches(ds, self.data_collator, cfg.batch_size, n_batches, seed)

    def attach_adapter(self):
        from peft import get_peft_model

        kwargs = {}
        if distributed.zero3_enabled():  # same as SFTTrainer: keep adapter dtype = base dtype under ZeRO-3
            kwargs["autocast_adapter_dtype"] = False
        peft_model = get_peft_model(self.model, copy.deepcopy(self.lora_config), **kwargs)
        if self.args.activation_checkpointing:
            peft_model.enable_input_require_grads()
        return trl_private.use_model(self, peft_model)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._stage >= 0:
            logs = {**logs, "stage": self._stage + 1}
        super().log(logs, start_time)

    # ------------------------------------------------------------ overridables
    def build_replay_sample(self, t: int) -> list[Dataset]:
        """Earlier-task examples for SLICE's G_prev before task t (train splits only)."""
        cfg = self.args.init
        n = cfg.prev_steps * cfg.batch_size
        return self.replay_provider.initialization_sample(t, self.tasks[:t], n, mode=cfg.prev_batching)

    def initialize_adapter(self, t: int, replay: list[Dataset]) -> InitReport:
        """Attach a fresh adapter and run the initialiser on current-task and replay batches, then
        the strategy's ``before_task``."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel):  # an adapter-space strategy's deployed adapter: dropped, base untouched
            trl_private.use_model(self, self.model.unload())
        peft_model = self.attach_adapter()
        cfg = self.args.init
        seed = stage_seed(cfg.seed, t)
        current = self._batches(self.prepared_train(self.tasks[t]), cfg.cur_steps, seed)
        previous = []
        for j, sample in enumerate(replay):
            # each_task: prev_steps batches per earlier task; pooled: prev_steps in total
            previous.extend(self._batches(self._prepare(sample, f"replay-{t}-{j}"), cfg.prev_steps, seed + j + 1))
        report = self.initializer(peft_model, ADAPTER, current, previous or None)
        self.strategy.before_task(self.stage_context, t, peft_model)
        return report

    def train_stage(self, t: int):
        """Train the current adapter on task t with SFTTrainer; fresh optimizer/scheduler/state."""
        task = self.tasks[t]
        train = self.prepared_train(task)
        mix = self.replay_provider.training_mix(t, self.tasks[:t], len(task.train))
        if mix is not None:
            train = concatenate_datasets([train, self._prepare(mix, f"{task.name}-replay")]).shuffle(
                seed=stage_seed(self.args.seed, t, 3))
        self.train_dataset = train
        trl_private.reset_optimizer(self)  # TRL would reuse the old adapter's optimizer
        self.step_hooks.seconds = 0.0  # time in the strategy's per-step hooks (part of "train")
        self.strategy.before_training(self.stage_context, t)
        set_seed(stage_seed(self.args.seed, t))
        return super().train()

    def finish_stage(self, t: int) -> None:
        """``before_save``, save the trained adapter (raw and converted), ``after_task``, save the
        strategy state, then merge into the base (``merge == "base"``) or keep the strategy's
        deployed adapter (``"adapter"``: the base is never changed; ``adapter_original_base`` then
        holds the deployed adapter). Without a strategy (`NoStrategy`): save, then merge."""
        path, strategy = self.stage_folder(t), self.strategy
        strategy.before_save(self.stage_context, t)
        if self.accelerator.is_main_process:
            if strategy.merge == "adapter":
                self.model.save_pretrained(str(path.raw), selected_adapters=[ADAPTER], safe_serialization=True)
            else:
                stages.save_trained(self.model, ADAPTER, path)
        distributed.barrier()
        strategy.after_task(self.stage_context, t)
        if self.accelerator.is_main_process:
            if strategy.merge == "adapter":
                self.model.save_pretrained(str(path.converted), selected_adapters=[ADAPTER],
                                           safe_serialization=True)
            strategy.save(path)
        distributed.barrier()
        trl_private.use_model(self, merge_into_base(self.model) if strategy.merge == "base" else self.model)

    def evaluate_seen_tasks(self, t: int) -> dict:
        """Score the tasks of stage t: every seen one, or task t alone between ``evaluation.every`` stages, and
        task t + 1 with ``score_upcoming`` (`evaluation.schedule`); returns {task name: TaskScore}."""
        from tqdm.auto import tqdm

        todo = [self.tasks[j] for j in tasks_to_score(t, len(self.tasks), self.args.evaluation)]
        bar = tqdm(todo, desc="eval", leave=False, disable=not (self.accelerator.is_main_process and console.bars_enabled()))
        return {task.name: evaluate_task(self.model, self.processing_class, task, self.args.evaluation,
                                         accelerator=self.accelerator)
                for task in bar}

    def evaluate_general_ability(self, stage: int) -> dict | None:
        """GP/IP (`slice_trl.evaluation.general.summarize`) of the model as it stands after ``stage`` (0 =
        the base model, before stage 1), with the change from the base model; None when
        ``evaluation.lm_eval_tasks`` is empty. The base model's scores are measured once and
        cached in `RunFolder.base_general` (reused on resume while the base model and the
        GP/IP settings are the same)."""
        from slice_trl.evaluation import general

        cfg = self.args.evaluation
        if not cfg.lm_eval_tasks:
            return None
        path = self.run_folder.base_general
        if stage == 0:
            identity = {"base_model": self.run_info.get("base_model") or getattr(self.model, "name_or_path", None),
                        "settings": general.settings(cfg)}

            def measure() -> dict:
                logger.info("Scoring the base model's general ability (GP/IP) on %s", cfg.lm_eval_tasks)
                return {"scores": evaluate_general(self.model, self.processing_class, cfg)}

            self._base_general = stages.base_measurement(path, identity, measure, self.args.resume)["scores"]
            return general.summarize(self._base_general, self._base_general, 0)
        if self._base_general is None:  # asked without stage 0 first: the base model's scores are on disk
            self._base_general = read_json(path)["scores"]
        return general.summarize(evaluate_general(self.model, self.processing_class, cfg), self._base_general, stage)

    def evaluate_base(self) -> dict | None:
        """R_0 (``evaluation.score_base``): score the base model on every task before stage 1 and
        write `RunFolder.base_record`; a record there from the same tasks and evaluation
        settings is reused (resume). Returns the record ({"scores": {task: score}, ...}) or None."""
        if not self.args.evaluation.score_base:
            return None
        identity = {"task_names": [t.name for t in self.tasks],
                    "evaluation": {k: v for k, v in self.args.evaluation.to_dict().items()  # not what R_0 needs:
                                   if not k.startswith("lm_eval") and k not in ("every", "score_upcoming")}}

        def measure() -> dict:
            t0 = time.perf_counter()
            scores = self.evaluate_seen_tasks(len(self.tasks) - 1)  # every task, on the untouched base model
            return {**stages.score_fields(scores), "timings": {"eval": time.perf_counter() - t0}}

        return stages.base_measurement(self.run_folder.base_record, identity, measure,
                                       self.args.resume)

    # -------------------------------------------------------------- the loop
    def _write_run_info(self) -> None:
        info = {
            "base_model": self.run_info.get("base_model") or getattr(self.model, "name_or_path", None),
            "task_names": [t.name for t in self.tasks],
            "seed": self.args.seed,
            "lora": json.loads(json.dumps(self.lora_config.to_dict(), default=str)),
            "init": self.args.init.to_dict(),
            "tasks": {t.name: {"metric": t.metric, "n_train": len(t.train), "n_eval": len(t.eval), **t.info}
                      for t in self.tasks},
            **{k: v for k, v in self.run_info.items() if k != "base_model"},
            integrity.FINGERPRINT: self.fingerprint,
        }
        if self.args.strategy is not None:
            info["strategy"] = self.args.strategy.to_dict()
        self.run_folder.write_run(info)

    def _resume(self, results: ResultsMatrix) -> tuple[int, list[dict]]:
        if not self.args.resume:
            return 0, []
        names = [t.name for t in self.tasks]
        done = 0
        if self.accelerator.is_main_process:
            stages.check_finished(self.run_folder.root, names)  # a damaged stage: one message naming its folder
            done = stages.finished_prefix(self.run_folder.root, names)
        done = distributed.broadcast_object(done)
        records = []
        for t in range(done):
            path = self.stage_folder(t)
            if self.strategy.merge == "base":
                self.model = stages.reapply_stage(self.model, self.lora_config, path, merge=True)
            record = path.read_record()
            results.record_stage(t, record["scores"])
            records.append(record)
            logger.info("Resumed stage %d (%s) from %s", t + 1, names[t], path.path)
        if done:
            self.strategy.restore(self.stage_folder(done - 1))
            self.strategy.on_resume(self.stage_context, done)
        trl_private.use_model(self, self.model)
        return done, records

    def _stage_record(self, t: int, report: InitReport, train_out, scores: dict, results: ResultsMatrix,
                      timings: dict, replay_sizes: list[int]) -> dict:
        return {
            "stage": t + 1,
            "task": self.tasks[t].name,
            **stages.score_fields(scores),
            "R": results.to_dict()["R"],
            "AP": results.ap(), "FP": results.fp(), "forgetting": results.forgetting(),
            "init": report.to_dict(),
            "replay_examples": replay_sizes,
            "train_metrics": dict(train_out.metrics) if train_out is not None else {},
            "timings": timings,
            **self.strategy.record_fields(),
        }

    def _write_results(self, results: ResultsMatrix, records: Sequence[dict], general: dict | None = None) -> None:
        """The results and the heatmap; ``general``: GP/IP of the final model (default: the last record's)."""
        if not self.accelerator.is_main_process:
            return
        general = general if general is not None else (records[-1].get("general") if records else None)
        payload = {**results.to_dict(), **results.summary()}  # AP, FP, forgetting (+ learned, retained with R_0)
        if general is not None:
            payload["general"] = general
        self.run_folder.write_results(payload)
        results.heatmap(self.run_folder.heatmap, title=f"R ({self.args.init.method})",
                        general={r["stage"] - 1: r["general"] for r in records if r.get("general")})

    def train(self, *args, **kwargs) -> ContinualTrainOutput:  # noqa: D401 - runs the whole sequence
        """Run (or resume) the whole task sequence. Returns R, the stage records and GP/IP."""
        if args or kwargs:
            raise TypeError("ContinualSFTTrainer.train() takes no arguments: resuming is automatic from output_dir.")
        if self.accelerator.is_main_process:
            if not self.args.resume:  # start over: nothing of the old run may be resumed later
                moved = integrity.move_aside(self.run_folder.root, overwrite_hint="resume=False")
                if moved is not None:
                    logger.warning("resume=False: moved the previous content of %s to %s", self.args.output_dir, moved)
            self.run_folder.root.mkdir(parents=True, exist_ok=True)
            self._write_run_info()
        distributed.barrier()
        results = ResultsMatrix([t.name for t in self.tasks])
        base = self.evaluate_base()  # the base model: before _resume merges finished stages into it
        if base is not None:
            results.set_base(base["scores"])
        general0 = self.evaluate_general_ability(0)  # base-model GP/IP (cached in the run folder's base/)
        start, records = self._resume(results)
        self.tracking.start(results, base, general0, start)
        for t in range(start, len(self.tasks)):
            self._stage = t
            path = self.stage_folder(t)
            timings = {}
            t0 = time.perf_counter()
            set_seed(stage_seed(self.args.seed, t))
            replay = self.build_replay_sample(t)
            report = self.initialize_adapter(t, replay)
            self.tracking.stage_begin(t, report)
            replay_sizes = [len(d) for d in replay]
            del replay  # used once for initialisation, then dropped (the paper's protocol)
            if self.accelerator.is_main_process:
                stages.save_initial(self.model, ADAPTER, path)
            timings["init"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            train_out = self.train_stage(t)
            timings["train"] = time.perf_counter() - t0
            timings.update(self.strategy.timing_fields(self.step_hooks.seconds))
            t0 = time.perf_counter()
            self.finish_stage(t)
            timings["save_merge"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            scores = self.evaluate_seen_tasks(t)
            timings["eval"] = time.perf_counter() - t0
            results.record_stage(t, {name: s.score for name, s in scores.items()})
            record = self._stage_record(t, report, train_out, scores, results, timings, replay_sizes)
            if self.args.evaluation.general_every_stage or t == len(self.tasks) - 1:
                t0 = time.perf_counter()
                record["general"] = self.evaluate_general_ability(t + 1)
                timings["general"] = time.perf_counter() - t0
            records.append(record)
            if self.accelerator.is_main_process:
                # the record marks the stage finished (written once its files are); results.json, which
                # names the stage, only after it: a kill in between leaves no claim of an unfinished stage
                path.write_record(record)
                self._write_results(results, records)
                self.tracking.stage_end(t, record, results, records)  # trackers, stage and progress lines
            distributed.barrier()
            self.after_stage(t, record)
        self._stage = -1
        general = records[-1].get("general") if records else None
        if general is None and self.args.evaluation.lm_eval_tasks:  # a run finished before GP/IP were asked for
            general = self.evaluate_general_ability(len(self.tasks))
        self._write_results(results, records, general)
        self.tracking.finish(results, general, self.run_folder.heatmap)
        if general is not None:
            self._publish()  # the final commit: the results and the card gain GP/IP
        return ContinualTrainOutput(results, records, general)

    def after_stage(self, t: int, record: dict) -> None:
        """Called once stage t is on disk: publishes it if a publisher was given."""
        self._publish()

    def _publish(self) -> None:
        if self.publisher is not None and self.accelerator.is_main_process:
            self.publisher(self.run_folder.root)
