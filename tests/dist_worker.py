"""A tiny 2-task ContinualSFTTrainer run, launched by tests/test_distributed.py as one process
(``python tests/dist_worker.py``) or several (``accelerate launch ... tests/dist_worker.py``).

Every rank dumps what it holds to ``<dump_dir>/rank<k>.pt``:

- ``init[t]``    the live adapter's A and B right after the initialiser (before training),
- ``trained[t]`` the live adapter's A and B after training (before the merge),
- ``final``      the merged model's state dict after the last stage,
- ``R``          the results matrix, ``world`` the number of processes,
- ``init_report[t]`` the surgery summary of stage t.

Usage: dist_worker.py OUTPUT_DIR DUMP_DIR PER_DEVICE_TRAIN_BATCH [METHOD]
The global training batch is PER_DEVICE_TRAIN_BATCH x world size; the initialiser's
gradient mini-batches (InitConfig.batch_size) do not depend on the world size (they are
sharded by rank inside `estimate_mean_gradients`).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402

from slice_trl import distributed  # noqa: E402
from slice_trl.config import ContinualSFTConfig  # noqa: E402
from slice_trl.tasks.base import Task  # noqa: E402
from slice_trl.testing import tiny_llama, tiny_tokenizer  # noqa: E402
from slice_trl.trainer import ADAPTER, ContinualSFTTrainer  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def constant_task(name: str, answer: str, n_train: int = 16, n_eval: int = 4, offset: int = 0) -> Task:
    """As in tests/test_trainer.py: every prompt has the same answer."""
    words = [f"w{i + offset}x" for i in range(n_train + n_eval)]
    rows = [{"prompt": [{"role": "user", "content": w}], "completion": [{"role": "assistant", "content": answer}]}
            for w in words]
    return Task(name, Dataset.from_list(rows[:n_train]), Dataset.from_list(rows[n_train:]), "exact_match")


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    """A and B of the live adapter, keyed by parameter name (fp32 copies)."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()
            if f".{ADAPTER}." in n and ("lora_A" in n or "lora_B" in n)}


class DumpingTrainer(ContinualSFTTrainer):
    dump: dict

    def initialize_adapter(self, t, replay):
        report = super().initialize_adapter(t, replay)
        self.dump.setdefault("init", {})[t] = adapter_tensors(self.model)
        self.dump.setdefault("init_report", {})[t] = report.surgery
        return report

    def finish_stage(self, t):
        self.dump.setdefault("trained", {})[t] = adapter_tensors(self.model)
        super().finish_stage(t)


def main(output_dir: str, dump_dir: str, per_device_batch: int, grad_accum: int = 1, epochs: float = 1.0,
         method: str = "slice") -> None:
    torch.set_num_threads(1)  # equal threading in every run (2 shared cores), and no oversubscription
    args = ContinualSFTConfig(
        output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=grad_accum,
        learning_rate=3e-2, warmup_ratio=0.0, logging_steps=1, max_length=64, seed=0,
        init={"method": method, "cur_steps": 2, "prev_steps": 2, "batch_size": 4},
        evaluation={"max_samples": 4, "batch_size": 2, "max_new_tokens": 4}, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True, report_to=[],
    )
    tasks = [constant_task("yes", "yes", offset=0), constant_task("no", "no", offset=100)]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, use_rslora=True)
    trainer = DumpingTrainer(model=tiny_llama(seed=1), args=args, tasks=tasks, peft_config=lora,
                             processing_class=tiny_tokenizer())
    trainer.dump = {}
    out = trainer.train()
    rank, world = distributed.rank_and_world()
    dump = trainer.dump
    dump["R"] = out.results.to_dict()["R"]
    dump["world"] = world
    dump["final"] = {k: v.detach().float().cpu().clone() for k, v in trainer.model.state_dict().items()}
    dump["steps"] = trainer.state.global_step
    os.makedirs(dump_dir, exist_ok=True)
    torch.save(dump, os.path.join(dump_dir, f"rank{rank}.pt"))
    distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), *sys.argv[6:7])
