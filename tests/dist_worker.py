"""Multi-process workers launched by tests/test_distributed.py (and runnable by hand).

``dist_worker.py train OUTPUT_DIR DUMP_DIR PER_DEVICE_BATCH GRAD_ACCUM EPOCHS [METHOD]``
    A tiny 2-task ContinualSFTTrainer run, as one process (``python tests/dist_worker.py ...``)
    or several (``accelerate launch --config_file accelerate_configs/cpu_2proc.yaml
    tests/dist_worker.py ...``). The global training batch is PER_DEVICE_BATCH x GRAD_ACCUM x
    world size; the initialiser's gradient mini-batches (InitConfig.batch_size) do not depend on
    the world size (they are sharded by rank inside `estimate_mean_gradients`). Every rank dumps
    to ``<DUMP_DIR>/rank<k>.pt``: ``init[t]`` / ``trained[t]`` (the live adapter's A and B right
    after the initialiser / after training, before the merge), ``final`` (the merged model's
    state dict after the last stage), ``R``, ``world``, ``steps`` and ``init_report[t]`` (the
    surgery summary of stage t).

``dist_worker.py zero3 DUMP_DIR PERSISTENCE_THRESHOLD`` (under ``torch.distributed.run``; needs
    DeepSpeed) - the SLICE initialiser and the merge on a model partitioned by DeepSpeed ZeRO-3
    for real (CPU, gloo), against the same steps on an unpartitioned copy. Dumps per rank the
    gathered adapter/base after the init and after the merge, for both models.

``dist_worker.py engines DUMP_DIR OUT_ROOT PER_DEVICE_BATCH GRAD_ACCUM CONFIG[,CONFIG...]`` - ONE launch
    that runs every named configuration (`ENGINE_CONFIGS`: the initialisers and strategies) as a
    short 2-task run, one after the other in the same process group: under DDP, DeepSpeed ZeRO-2
    or ZeRO-3 (whatever the launcher set up) or as one process. Per configuration and rank it
    dumps ``<DUMP_DIR>/<config>/rank<k>.pt`` with, per stage t: ``pre[t]`` (the full model right
    before the adapter is attached), ``batches[t]`` (the initialiser's current and previous
    mini-batches), ``init[t]`` (A, B after the initialiser and the strategy's ``before_task``),
    ``report[t]``, ``prefinish[t]`` (the full model after training, before save/merge),
    ``merged[t]`` (after the merge) and ``logits[t]`` (the deployed model on `PROBE_IDS`).

``dist_worker.py bench_svd`` (under ``torch.distributed.run``) - the measurement behind the
    factor-sharing decision in `slice_trl.initializers.RescaledInitializer._finish`: LoRA-GA
    slices recomputed on every rank, vs computed on rank 0 and broadcast, vs sharded over the
    ranks (module i on rank i % world) and broadcast from the owner.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402

from slice_trl.utils import distributed  # noqa: E402
from slice_trl.configs.config import ContinualSFTConfig  # noqa: E402
from slice_trl.tasks.base import Task  # noqa: E402
from slice_trl.utils.testing import (
    COMPATIBILITY_ROWS as ENGINE_CONFIGS,
    PROBE_IDS,
    conflicting_tiny_llama,
    no_deepspeed_op_builds,
    tiny_llama,
    tiny_tokenizer,
)
from slice_trl.trainer.continual_sft_trainer import ADAPTER, ContinualSFTTrainer  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def constant_task(name: str, answer: str, n_train: int = 16, n_eval: int = 4, offset: int = 0) -> Task:
    """As in tests/test_trainer.py: every prompt has the same answer."""
    words = [f"w{i + offset}x" for i in range(n_train + n_eval)]
    rows = [{"prompt": [{"role": "user", "content": w}], "completion": [{"role": "assistant", "content": answer}]}
            for w in words]
    return Task(name, Dataset.from_list(rows[:n_train]), Dataset.from_list(rows[n_train:]), "exact_match")


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    """A and B of the live adapter, keyed by parameter name (fp32 CPU copies; gathered under
    ZeRO-3)."""
    return {n: t for n, t in _full_state(model).items()
            if f".{ADAPTER}." in n and ("lora_A" in n or "lora_B" in n)}


class DumpingTrainer(ContinualSFTTrainer):
    dump: dict

    def initialize_adapter(self, t, replay):
        w = self.model.get_input_embeddings().weight  # ZeRO-3: partitioned once an engine exists
        self.dump.setdefault("partitioned", {})[t] = hasattr(w, "ds_id") and w.numel() == 0
        report = super().initialize_adapter(t, replay)
        self.dump.setdefault("init", {})[t] = adapter_tensors(self.model)
        self.dump.setdefault("init_report", {})[t] = report.surgery
        return report

    def finish_stage(self, t):
        self.dump.setdefault("trained", {})[t] = adapter_tensors(self.model)
        super().finish_stage(t)


def main(output_dir: str, dump_dir: str, per_device_batch: int, grad_accum: int = 1, epochs: float = 1.0,
         method: str = "slice", strategy: str | None = None) -> None:
    torch.set_num_threads(1)  # equal threading in every run (2 shared cores), and no oversubscription
    args = ContinualSFTConfig(
        output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=grad_accum,
        learning_rate=3e-2, warmup_steps=0, logging_steps=1, max_length=64, seed=0,
        init={"method": method, "cur_steps": 2, "prev_steps": 2, "batch_size": 4},
        strategy=None if strategy is None else {"name": strategy},
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
    dump["final"] = _full_state(trainer.model)
    dump["steps"] = trainer.state.global_step
    os.makedirs(dump_dir, exist_ok=True)
    torch.save(dump, os.path.join(dump_dir, f"rank{rank}.pt"))
    distributed.barrier()


def _tiny_batches(tok, answer: str, n_batches: int, seed: int) -> list[dict]:
    from slice_trl.trainer.batching import default_collator, prepare_sft_dataset, sample_batches

    task = constant_task(answer, answer, n_train=16, n_eval=1, offset=0 if answer == "yes" else 100)
    prepared = prepare_sft_dataset(task.train, tok, max_length=64)
    return sample_batches(prepared, default_collator(tok), batch_size=4, n_batches=n_batches, seed=seed)


def _full_state(model) -> dict[str, torch.Tensor]:
    """Every parameter at full size (gathered under ZeRO-3), as fp32 CPU copies."""
    params = dict(model.named_parameters())
    partitioned = [p for p in params.values() if hasattr(p, "ds_id") and p.numel() == 0]  # not the gathered ones
    with distributed.gathered(partitioned, modifier_rank=None):
        return {n: p.detach().float().cpu().clone() for n, p in params.items()}


def zero3(dump_dir: str, persistence_threshold: int) -> None:
    import copy

    import deepspeed
    from peft import get_peft_model
    from transformers.integrations import HfDeepSpeedConfig

    from slice_trl.configs.config import InitConfig
    from slice_trl.initializers import SliceInitializer
    from slice_trl.models.gradients import estimate_mean_gradients, target_weights
    from slice_trl.trainer.continual_sft_trainer import merge_into_base

    torch.set_num_threads(1)
    no_deepspeed_op_builds()
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = distributed.rank_and_world()
    tok = tiny_tokenizer()
    cur = _tiny_batches(tok, "yes", 3, seed=1)  # 3 mini-batches on 2 ranks: uneven shares
    prev = _tiny_batches(tok, "no", 2, seed=2)
    cfg = InitConfig(method="slice", cur_steps=3, prev_steps=2, batch_size=4, micro_batch_size=2)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, use_rslora=True)
    base = tiny_llama(seed=1)
    dump = {"world": world}

    # reference: the same multi-process path on an unpartitioned model
    ref = get_peft_model(copy.deepcopy(base), copy.deepcopy(lora))
    dump["ref_G"] = estimate_mean_gradients(ref, cur, target_weights(ref, adapter_name=ADAPTER), 2)[0]
    dump["ref_report"] = SliceInitializer(cfg)(ref, ADAPTER, cur, prev).to_dict()
    dump["ref_init"] = _full_state(ref)
    dump["ref_merged"] = _full_state(merge_into_base(ref))

    ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": persistence_threshold},
                 "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
    keep = HfDeepSpeedConfig(ds_config)  # noqa: F841 - makes is_deepspeed_zero3_enabled() true
    assert distributed.zero3_enabled()
    model = get_peft_model(copy.deepcopy(base), copy.deepcopy(lora))
    deepspeed.initialize(model=model, config=ds_config,
                         model_parameters=[p for p in model.parameters() if p.requires_grad])
    q = model.base_model.model.model.layers[0].self_attn.q_proj.get_base_layer().weight
    dump["partitioned"] = hasattr(q, "ds_id") and q.numel() == 0
    dump["G"] = estimate_mean_gradients(model, cur, target_weights(model, adapter_name=ADAPTER), 2)[0]
    dump["report"] = SliceInitializer(cfg)(model, ADAPTER, cur, prev).to_dict()
    dump["init"] = _full_state(model)
    dump["merged"] = _full_state(merge_into_base(model))
    os.makedirs(dump_dir, exist_ok=True)
    torch.save(dump, os.path.join(dump_dir, f"rank{rank}.pt"))
    distributed.barrier()


# ---------------------------------------------------------------------------------------------
# engines: every initialiser and strategy in one launch (the rows: slice_trl.utils.testing.COMPATIBILITY_ROWS)
# ---------------------------------------------------------------------------------------------


def engine_args(output_dir: str, config: str, per_device_batch: int, grad_accum: int) -> ContinualSFTConfig:
    init, strategy = ENGINE_CONFIGS[config]
    return ContinualSFTConfig(
        output_dir=output_dir, num_train_epochs=1, per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=grad_accum, learning_rate=1e-2, warmup_steps=0, logging_steps=1, max_length=64,
        seed=0, init={**init, "cur_steps": 2, "prev_steps": 2, "batch_size": 4},
        strategy=None if strategy is None else {"name": strategy},
        evaluation={"max_samples": 2, "batch_size": 2, "max_new_tokens": 2}, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True, report_to=[], save_strategy="no",
    )


class CapturingTrainer(ContinualSFTTrainer):
    """Records what must agree between engines (see the module docstring, ``engines``)."""

    dump: dict

    def initialize_adapter(self, t, replay):
        w = self.model.get_input_embeddings().weight  # ZeRO-3: partitioned once an engine exists
        self.dump.setdefault("partitioned", {})[t] = hasattr(w, "ds_id") and w.numel() == 0
        self.dump.setdefault("pre", {})[t] = _full_state(self.model)
        inner = self.initializer

        def capture(model, adapter_name, current, previous):
            current, previous = list(current), list(previous or [])
            self.dump.setdefault("batches", {})[t] = (current, previous)
            return inner(model, adapter_name, current, previous or None)

        self.initializer = capture
        try:
            report = super().initialize_adapter(t, replay)
        finally:
            self.initializer = inner
        self.dump.setdefault("init", {})[t] = adapter_tensors(self.model)
        self.dump.setdefault("report", {})[t] = report.to_dict()
        return report

    def finish_stage(self, t):
        self.dump.setdefault("prefinish", {})[t] = _full_state(self.model)
        super().finish_stage(t)
        self.dump.setdefault("merged", {})[t] = _full_state(self.model)
        self.dump.setdefault("logits", {})[t] = deployed_logits(self.model)


@torch.no_grad()
def deployed_logits(model) -> torch.Tensor:
    """Logits (1, len(PROBE_IDS[0]), vocab) of the model as deployed, fp32 (every rank runs the
    forward: under ZeRO-3 it gathers collectively)."""
    from slice_trl.models.lora import eval_mode

    with eval_mode(model):
        return model(input_ids=torch.tensor(PROBE_IDS)).logits.float().cpu()


def engine_lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=2, target_modules=TARGETS, lora_dropout=0.0, use_rslora=True)  # s = 1


def engines(dump_dir: str, out_root: str, per_device_batch: int, grad_accum: int, configs: str) -> None:
    torch.set_num_threads(1)
    no_deepspeed_op_builds()
    lora = engine_lora()
    # conflicting answers on a model where they conflict: SLICE's surgery acts at stage 2
    tasks = [constant_task("xs", "x" * 8, offset=0), constant_task("zs", "z" * 8, offset=100)]
    for config in configs.split(","):
        args = engine_args(os.path.join(out_root, config), config, per_device_batch, grad_accum)
        trainer = CapturingTrainer(model=conflicting_tiny_llama(seed=1), args=args, tasks=tasks, peft_config=lora,
                                   processing_class=tiny_tokenizer())
        trainer.dump = {}
        trainer.train()
        rank, world = distributed.rank_and_world()
        trainer.dump.update(world=world, steps=trainer.state.global_step,
                            engine=trainer.accelerator.distributed_type.value,
                            zero_stage=trainer.accelerator.state.deepspeed_plugin.zero_stage
                            if trainer.accelerator.state.deepspeed_plugin else None)
        os.makedirs(os.path.join(dump_dir, config), exist_ok=True)
        torch.save(trainer.dump, os.path.join(dump_dir, config, f"rank{rank}.pt"))
        distributed.barrier()
        del trainer


def bench_svd(hidden: int = 512, intermediate: int = 1408, kv: int = 128, layers: int = 4, r: int = 16) -> None:
    import time

    import torch.distributed as dist

    from slice_trl.kernels.decompose import lora_ga_slices, module_seed

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    shapes = {"q": (hidden, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, hidden),
              "gate": (intermediate, hidden), "up": (intermediate, hidden), "down": (hidden, intermediate)}
    gen = torch.Generator().manual_seed(0)
    grads = {f"{i}.{n}": torch.randn(*s, generator=gen) for i in range(layers) for n, s in shapes.items()}
    names = list(grads)

    def slices(name):
        return lora_ga_slices(grads[name], r, 4, 4, seed=module_seed(42, name))

    def owned_by(owner_of):
        out = {}
        for i, n in enumerate(names):
            owner = owner_of(i)
            b, a = slices(n) if rank == owner else (torch.empty(grads[n].shape[0], r), torch.empty(r, grads[n].shape[1]))
            dist.broadcast(b, owner)
            dist.broadcast(a, owner)
            out[n] = (b, a)
        return out

    def recompute_everywhere():
        return {n: slices(n) for n in names}

    def recompute_then_broadcast_rank0():
        out = recompute_everywhere()
        for b, a in out.values():
            dist.broadcast(b, 0)
            dist.broadcast(a, 0)
        return out

    def rank0_then_broadcast():
        return owned_by(lambda i: 0)

    def sharded_then_broadcast():
        return owned_by(lambda i: i % world)

    ref = recompute_everywhere()
    for fn in (recompute_everywhere, recompute_then_broadcast_rank0, rank0_then_broadcast, sharded_then_broadcast) * 2:
        dist.barrier()
        t0 = time.perf_counter()
        out = fn()
        dist.barrier()
        dt = time.perf_counter() - t0
        same = all(torch.equal(out[n][0], ref[n][0]) and torch.equal(out[n][1], ref[n][1]) for n in names)
        if rank == 0:
            print(f"{fn.__name__:32s} {dt:7.3f} s  equal={same}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "train":
        main(rest[0], rest[1], int(rest[2]), int(rest[3]), float(rest[4]), *rest[5:7])  # [method [strategy]]
    elif mode == "zero3":
        zero3(rest[0], int(rest[1]))
    elif mode == "engines":
        engines(rest[0], rest[1], int(rest[2]), int(rest[3]), rest[4])
    elif mode == "bench_svd":
        bench_svd()
    else:
        raise SystemExit(f"unknown mode {mode!r}: train | zero3 | engines | bench_svd")
