"""Integration: ContinualSFTTrainer on the real SmolLM2-135M-Instruct learns two short tasks."""

import pytest
from peft import LoraConfig

from slice_trl.configs.config import ContinualSFTConfig, EvalConfig
from slice_trl.evaluation import evaluate_task
from slice_trl.models.loading import load_model_and_tokenizer
from slice_trl.tasks import TaskSpec, build_tasks
from slice_trl.trainer.continual_sft_trainer import ContinualSFTTrainer

pytestmark = pytest.mark.slow


def test_two_task_sequence_learns_each_task(tmp_path):
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct")
    specs = [TaskSpec(source="builtin", task=name, max_train=48, max_eval=16) for name in ("first", "last")]
    tasks = build_tasks(specs, tokenizer, max_length=96)
    eval_cfg = EvalConfig(max_samples=16, batch_size=16, max_new_tokens=6)
    untrained = [evaluate_task(model, tokenizer, task, eval_cfg).score for task in tasks]

    args = ContinualSFTConfig(
        output_dir=str(tmp_path), num_train_epochs=1, per_device_train_batch_size=8, learning_rate=2e-4,
        warmup_steps=0, max_length=96, seed=0, use_cpu=True, disable_tqdm=True, logging_steps=3,
        init={"method": "slice", "cur_steps": 1, "prev_steps": 1, "batch_size": 8, "micro_batch_size": 8},
        evaluation=eval_cfg.to_dict(),
    )
    trainer = ContinualSFTTrainer(
        model=model, args=args, tasks=tasks, processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=8, use_rslora=True, lora_dropout=0.0,
                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"]),
    )
    out = trainer.train()
    R = out.results.to_dict()["R"]
    # the diagonal beats the untrained model on each task
    assert R[0][0] > untrained[0], (R, untrained)
    assert R[1][1] > untrained[1], (R, untrained)
    # SLICE's stage-2 record carries the surgery log (cosine, gamma, fired, fraction of negative modules)
    surgery = out.records[1]["init"]["surgery"]
    assert surgery["cosine"] is not None and 0.0 <= surgery["frac_negative_modules"] <= 1.0
