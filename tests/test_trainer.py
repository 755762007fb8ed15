"""ContinualSFTTrainer on tiny random Llamas: R's shape and metrics, function preservation at
every stage start, resume after a crash, subclassing, and bad input."""

import json

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PrefixTuningConfig
from transformers import TrainerCallback

from slice_trl.configs.config import ContinualSFTConfig
from slice_trl.tasks.base import Task
from slice_trl.utils.testing import tiny_llama, tiny_tokenizer
from slice_trl.trainer.continual_sft_trainer import ContinualSFTTrainer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def constant_task(name: str, answer: str, n_train: int = 24, n_eval: int = 6, offset: int = 0) -> Task:
    """Every prompt (a short word) has the same answer: a tiny model learns it in a few steps, and
    a later task with another answer overwrites it (visible forgetting)."""
    words = [f"w{i + offset}x" for i in range(n_train + n_eval)]
    rows = [{"prompt": [{"role": "user", "content": w}], "completion": [{"role": "assistant", "content": answer}]}
            for w in words]
    return Task(name, Dataset.from_list(rows[:n_train]), Dataset.from_list(rows[n_train:]), "exact_match")


def make_config(tmp_path, **overrides):
    init = overrides.pop("init", {"method": "slice", "cur_steps": 2, "prev_steps": 2, "batch_size": 4,
                                  "micro_batch_size": 2})
    defaults = dict(
        output_dir=str(tmp_path), num_train_epochs=1, per_device_train_batch_size=4, learning_rate=3e-2,
        warmup_steps=0, logging_steps=1, max_length=64, seed=0, init=init,
        evaluation={"max_samples": 6, "batch_size": 3, "max_new_tokens": 6}, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    defaults.update(overrides)
    return ContinualSFTConfig(**defaults)


def lora(r=4):
    return LoraConfig(r=r, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, use_rslora=True)


def three_tasks():
    return [constant_task("yes", "yes", offset=0), constant_task("no", "no", offset=100),
            constant_task("maybe", "maybe", offset=200)]


def build(tmp_path, tasks=None, cls=ContinualSFTTrainer, callbacks=None, **cfg):
    return cls(model=tiny_llama(seed=1), args=make_config(tmp_path, **cfg),
               tasks=three_tasks() if tasks is None else tasks,
               peft_config=lora(), processing_class=tiny_tokenizer(), callbacks=callbacks)


class RecordingTrainer(ContinualSFTTrainer):
    """Overrides one method (initialize_adapter) to check the model's function across it."""

    probe = torch.tensor([[1, 88, 86, 72, 85, 202, 90, 91, 2, 202, 1, 68]])

    def initialize_adapter(self, t, replay):
        self.model.eval()
        with torch.no_grad():
            before = self.model(input_ids=self.probe).logits
        report = super().initialize_adapter(t, replay)
        self.model.eval()
        with torch.no_grad():
            after = self.model(input_ids=self.probe).logits
        self.diffs = getattr(self, "diffs", []) + [float((after - before).abs().max())]
        self.replays = getattr(self, "replays", []) + [[len(d) for d in replay]]
        return report


def test_three_task_run_fills_lower_triangular_R_and_metrics(tmp_path):
    trainer = build(tmp_path, cls=RecordingTrainer)
    out = trainer.train()
    R = out.results.to_dict()["R"]
    assert len(R) == 3 and all(len(row) == 3 for row in R)
    for i in range(3):
        for j in range(3):
            assert (R[i][j] is None) == (j > i)
    ap = sum(R[i][i] for i in range(3)) / 3
    fp = sum(R[2][j] for j in range(3)) / 3
    assert out.results.ap() == pytest.approx(ap)
    assert out.results.fp() == pytest.approx(fp)
    assert out.results.forgetting() == pytest.approx(ap - fp)
    assert all(0.0 <= R[i][j] <= 1.0 for i in range(3) for j in range(i + 1))
    # function preserved at every stage start (SLICE absorbs B0 A0 into the base)
    assert max(trainer.diffs) <= 1e-4
    # replay: none before task 1, one sample per earlier task afterwards (each_task), 2 x 4 examples each
    assert trainer.replays == [[], [8], [8, 8]]
    # everything on disk
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["R"] == R
    for t, name in enumerate(["yes", "no", "maybe"]):
        stage = tmp_path / "stages" / f"{t + 1:02d}-{name}"
        record = json.loads((stage / "record.json").read_text())
        assert record["stage"] == t + 1 and set(record["scores"]) == {"yes", "no", "maybe"}.intersection(
            ["yes", "no", "maybe"][: t + 1])
        assert (stage / "adapter" / "adapter_model.safetensors").exists()
        assert (stage / "adapter_original_base" / "adapter_model.safetensors").exists()
        assert record["init"]["method"] == "slice"
    assert (tmp_path / "results_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    stage3 = json.loads((tmp_path / "stages" / "03-maybe" / "record.json").read_text())
    assert stage3["init"]["surgery"]["cosine"] is not None  # G_prev was used at stage 3


class Crash(TrainerCallback):
    """Simulates a kill in the middle of stage 2."""

    def __init__(self, trainer_ref):
        self.trainer_ref = trainer_ref

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer_ref[0]._stage == 1 and state.global_step == 3:
            raise KeyboardInterrupt("simulated kill in stage 2")


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_after_kill_in_stage_2_matches_uninterrupted(tmp_path):
    full = build(tmp_path / "full")
    ref = full.train()
    ref_weights = _weights(full.model)

    holder = [None]
    crashing = build(tmp_path / "resumed", callbacks=[Crash(holder)])
    holder[0] = crashing
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    stages = tmp_path / "resumed" / "stages"
    assert (stages / "01-yes" / "record.json").exists()
    assert not (stages / "02-no" / "record.json").exists()

    resumed = build(tmp_path / "resumed")
    out = resumed.train()
    assert out.results.to_dict()["R"] == ref.results.to_dict()["R"]
    got = _weights(resumed.model)
    assert got.keys() == ref_weights.keys()
    for k in got:
        torch.testing.assert_close(got[k], ref_weights[k], rtol=0, atol=1e-6)


def test_vanilla_and_lora_ga_and_loram_run(tmp_path):
    for method in ("vanilla", "lora_ga", "loram"):
        trainer = build(tmp_path / method, tasks=three_tasks()[:2],
                        init={"method": method, "cur_steps": 1, "batch_size": 4})
        out = trainer.train()
        assert out.records[0]["init"]["method"] == method
        assert out.results.completed == 2


def test_training_time_replay_mixes_earlier_examples(tmp_path):
    trainer = build(tmp_path, tasks=three_tasks()[:2], replay={"train_fraction": 0.5},
                    init={"method": "vanilla"})
    out = trainer.train()
    # stage 2 trained on 24 current + 12 replayed examples at batch 4 -> 9 optimizer steps (stage 1: 6)
    assert trainer.state.global_step == 9
    assert out.results.completed == 2


@pytest.mark.parametrize("bad, message", [
    (lambda: [], "tasks is empty"),
    (lambda: [constant_task("a", "x"), constant_task("a", "y")], "Duplicate task names"),
    (lambda: [Task("a", Dataset.from_list([]), constant_task("a", "x").eval)], "empty train split"),
    (lambda: [Task("a", constant_task("a", "x").train, Dataset.from_list([]))], "empty eval split"),
    (lambda: [Task("a", Dataset.from_list([{"question": "q", "answer": "a"}]),
                   Dataset.from_list([{"question": "q", "answer": "a"}]))], "expected 'prompt' and 'completion'"),
])
def test_bad_tasks_are_rejected_before_training(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        build(tmp_path, tasks=bad())


def test_non_lora_peft_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="peft_config must be a peft.LoraConfig"):
        ContinualSFTTrainer(model=tiny_llama(), args=make_config(tmp_path), tasks=three_tasks(),
                            peft_config=PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
                            processing_class=tiny_tokenizer())


class CountingTrainer(ContinualSFTTrainer):
    """Counts calls of evaluate_seen_tasks (the base row goes through it too)."""

    calls = 0

    def evaluate_seen_tasks(self, t):
        type(self).calls += 1
        return super().evaluate_seen_tasks(t)


def test_base_row_scores_the_untrained_model_and_is_reused_on_resume(tmp_path):
    from slice_trl.evaluation import evaluate_task
    from slice_trl.configs.config import EvalConfig

    tasks = three_tasks()[:2]
    evaluation = {"max_samples": 6, "batch_size": 3, "max_new_tokens": 6, "score_base": True}
    init = {"method": "vanilla"}
    out = build(tmp_path, tasks=tasks, cls=CountingTrainer, evaluation=evaluation, init=init).train()
    assert CountingTrainer.calls == 3  # base row + 2 stages
    # independent fact: the same base model scored directly, without the trainer
    direct = {t.name: evaluate_task(tiny_llama(seed=1), tiny_tokenizer(), t,
                                    EvalConfig(max_samples=6, batch_size=3, max_new_tokens=6)).score for t in tasks}
    record = json.loads((tmp_path / "base" / "record.json").read_text())
    assert record["scores"] == direct
    assert out.results.base == [direct["yes"], direct["no"]]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["base"] == out.results.base
    assert saved["learned"] == pytest.approx(out.results.ap() - (direct["yes"] + direct["no"]) / 2)
    # a rerun over the finished output_dir neither retrains nor rescores the base model
    CountingTrainer.calls = 0
    again = build(tmp_path, tasks=tasks, cls=CountingTrainer, evaluation=evaluation, init=init).train()
    assert CountingTrainer.calls == 0 and again.results == out.results
    # a base record copied into a fresh output_dir (as the benchmark shares R_0 between runs) is
    # reused with the same evaluation settings, and scored again with other ones
    for max_samples, calls in ((6, 2), (5, 3)):
        fresh = tmp_path / f"fresh{max_samples}"
        (fresh / "base").mkdir(parents=True)
        (fresh / "base" / "record.json").write_text((tmp_path / "base" / "record.json").read_text())
        CountingTrainer.calls = 0
        build(fresh, tasks=tasks, cls=CountingTrainer, evaluation={**evaluation, "max_samples": max_samples},
              init=init).train()
        assert CountingTrainer.calls == calls


def test_private_trl_and_transformers_api_is_used_only_through_trl_private():
    """Every private TRL/transformers use sits in slice_trl/trainer/trl_private.py, each with the version
    it was checked against; the trainer itself has no `if self.strategy` branch (NoStrategy)."""
    import re

    import trl
    import transformers

    from pathlib import Path

    from slice_trl.trainer import trl_private

    root = Path(trl_private.__file__).parents[1]
    private = re.compile(r"\._prepare_dataset\(|\bmodel_wrapped\b|\b_commit_hash|trl\.trainer\.sft_trainer|"
                         r"set_zero3_state|deepspeed_plugin|is_deepspeed_enabled|lr_scheduler = None")
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if p.name != "trl_private.py" and private.search(p.read_text()))
    assert users == [], users
    assert trl_private.CHECKED_AGAINST["trl"] == trl.__version__  # upgrading: re-check every wrapper there
    assert trl_private.CHECKED_AGAINST["transformers"] == transformers.__version__
    trainer_src = (root / "trainer" / "continual_sft_trainer.py").read_text()
    assert not re.search(r"self\.strategy( is|:|\))", trainer_src)  # (a branch on its merge mode is fine)
    assert len(trainer_src.splitlines()) <= 450
