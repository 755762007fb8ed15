"""bf16 for real, on CPU: the paper recipes' settings (``dtype: bfloat16`` base weights, ``bf16: true``
autocast), every initialiser and strategy through a 2-task ContinualSFTTrainer run, checked for
the invariants that hold in bf16 (the README's compatibility table cites these tests):

- absorption leaves the model's outputs unchanged to bf16 rounding (W - s B0 A0 is rounded once
  into bf16; an unabsorbed init moves the logits by far more, checked too);
- SLICE with c = 0 is LoRA-GA, bit for bit, in bf16 as in fp32;
- the published adapter (PEFT's converted form) on the original bf16 base reproduces the stage's
  deployed outputs to bf16 rounding;
- the probe's gradients are accumulated in fp32 on bf16 weights (docs/method.md, step 1), and
  G_prev stored in bf16 (``init.prev_grad_dtype: bfloat16``) gives an init within a subspace
  cosine of 0.99 of the fp32-stored one with the surgery firing in every module (measured 0.9989
  global, 0.9959 per module; the README's 0.99999 was measured on SmolLM2, where the projection
  acted on 3 of 210 modules).

The tasks answer 'x' * 8 and 'z' * 8 on a tiny Llama whose LM-head row of 'z' is partly opposite to
that of 'x' (as in tests/test_initializers.py), so the two tasks' gradients conflict and SLICE's
surgery acts at stage 2.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from slice_trl.configs.config import ContinualSFTConfig
from slice_trl.models.lora import ADAPTER, eval_mode, lora_layers
from slice_trl.tasks.base import Task
from slice_trl.utils.testing import COMPATIBILITY_ROWS, PROBE_IDS, conflicting_tiny_llama, tiny_tokenizer
from slice_trl.trainer.continual_sft_trainer import ContinualSFTTrainer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ROWS = {**COMPATIBILITY_ROWS, "slice_c0": ({"method": "slice", "c": 0.0}, None)}  # the README's rows, and c = 0
PROBE = torch.tensor(PROBE_IDS)
# logits of order 1; bf16 keeps 8 bits. Measured: absorption moves them by <= 0.008 (the init itself,
# unabsorbed, by 0.43-1.05), the published adapter is off by <= 0.008
BF16_TOL = 0.02


def conflicting_base() -> torch.nn.Module:
    return conflicting_tiny_llama(seed=0).to(torch.bfloat16)


def _task(name: str, answer: str) -> Task:
    rows = [{"prompt": [{"role": "user", "content": f"w{i}x"}],
             "completion": [{"role": "assistant", "content": answer}]} for i in range(20)]
    return Task(name, Dataset.from_list(rows[:16]), Dataset.from_list(rows[16:]), "exact_match")


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    with eval_mode(model):
        return model(input_ids=PROBE).logits.float()


class RecordingTrainer(ContinualSFTTrainer):
    log_: dict

    def initialize_adapter(self, t, replay):
        before = _logits(self.model)
        report = super().initialize_adapter(t, replay)
        self.log_.setdefault("absorption", {})[t] = float((_logits(self.model) - before).abs().max())
        with self.model.disable_adapter():  # the absorbed base alone: how far the init moved W
            self.log_.setdefault("unabsorbed", {})[t] = float((_logits(self.model) - before).abs().max())
        self.log_.setdefault("init", {})[t] = {n: (m.lora_A[ADAPTER].weight.detach().clone(),
                                                  m.lora_B[ADAPTER].weight.detach().clone())
                                              for n, m in lora_layers(self.model, ADAPTER).items()}
        return report

    def finish_stage(self, t):
        super().finish_stage(t)
        self.log_.setdefault("deployed", {})[t] = _logits(self.model)


def _run(tmp_path, row: str):
    init, strategy = ROWS[row]
    args = ContinualSFTConfig(
        output_dir=str(tmp_path / row), num_train_epochs=1, per_device_train_batch_size=4, learning_rate=1e-2,
        warmup_steps=0, max_length=64, seed=0, bf16=True, use_cpu=True, report_to=[], disable_tqdm=True,
        init={**init, "cur_steps": 2, "prev_steps": 2, "batch_size": 4},
        strategy=None if strategy is None else {"name": strategy},
        evaluation={"max_samples": 2, "batch_size": 2, "max_new_tokens": 2}, dataloader_num_workers=0,
    )
    lora = {"r": 4, "lora_alpha": 2, "target_modules": TARGETS, "lora_dropout": 0.0, "use_rslora": True}
    from peft import LoraConfig

    trainer = RecordingTrainer(model=conflicting_base(), args=args, tasks=[_task("xs", "x" * 8), _task("zs", "z" * 8)],
                               peft_config=LoraConfig(**lora), processing_class=tiny_tokenizer())
    trainer.log_ = {}
    out = trainer.train()
    return trainer, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("bf16")
    return {row: _run(tmp, row) for row in ROWS}


@pytest.mark.slow
@pytest.mark.parametrize("row", list(ROWS))
def test_bf16_run_keeps_the_invariants(runs, row):
    from peft import PeftModel

    trainer, out = runs[row]
    log = trainer.log_
    model = trainer.model.base_model.model if row == "slao" else trainer.model
    assert model.model.layers[0].self_attn.q_proj.get_base_layer().weight.dtype == torch.bfloat16 if row == "slao" \
        else model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16  # base weights stay bf16
    # absorption (SLAO's stage 2 starts from the previous adapter on W0 by design: no absorption)
    for t in (0,) if row == "slao" else (0, 1):
        assert log["absorption"][t] < BF16_TOL, (row, t, log["absorption"][t])
    if ROWS[row][0]["method"] in ("slice", "lora_ga", "loram"):
        # the init moved the base by far more than the tolerance: without absorption the outputs would move
        assert log["unabsorbed"][0] > 4 * BF16_TOL, (row, log["unabsorbed"][0])
    # the published adapter on the original base reproduces stage 1's deployed outputs
    path = trainer.stage_folder(0).converted
    published = PeftModel.from_pretrained(conflicting_base(), str(path))
    diff = float((_logits(published) - log["deployed"][0]).abs().max())
    assert diff < BF16_TOL, (row, diff)
    assert len(out.records) == 2 and all(0 <= s <= 1 for r in out.records for s in r["scores"].values())


@pytest.mark.slow
def test_bf16_slice_with_c0_is_lora_ga_bit_for_bit(runs):
    a, b = runs["slice_c0"][0].log_, runs["lora_ga"][0].log_
    assert runs["slice"][0].log_  # (the surgery's run, for contrast below)
    for t in (0, 1):
        for name, (lora_a, lora_b) in a["init"][t].items():
            assert torch.equal(lora_a, b["init"][t][name][0]) and torch.equal(lora_b, b["init"][t][name][1]), (t, name)
    assert torch.equal(a["deployed"][1], b["deployed"][1])


@pytest.mark.slow
def test_bf16_surgery_fires_and_changes_the_init(runs):
    """On these conflicting tasks the surgery acts at stage 2 in bf16: SLICE's factors differ from LoRA-GA's."""
    record = runs["slice"][1].records[1]
    assert record["init"]["surgery"]["fired"] and record["init"]["surgery"]["cosine"] < 0
    s, g = runs["slice"][0].log_["init"][1], runs["lora_ga"][0].log_["init"][1]
    assert any(not torch.equal(s[n][0], g[n][0]) for n in s)


def _subspace_cos(x: torch.Tensor, y: torch.Tensor) -> float:
    qx, _ = torch.linalg.qr(x.double())
    qy, _ = torch.linalg.qr(y.double())
    return float(torch.linalg.svdvals(qx.T @ qy).clamp(max=1.0).mean())


@pytest.mark.parametrize("projection", ["global", "per_module"])
def test_bf16_probe_accumulates_in_fp32_and_bf16_g_prev_keeps_the_subspace(projection):
    from peft import LoraConfig, get_peft_model

    from slice_trl.trainer.batching import default_collator, prepare_sft_dataset, sample_batches
    from slice_trl.initializers import SliceInitializer
    from slice_trl.models.gradients import estimate_mean_gradients, target_weights
    from slice_trl.configs.settings import InitConfig

    tok = tiny_tokenizer()

    def batches(answer, seed):
        prepared = prepare_sft_dataset(_task(answer, answer * 8).train, tok, max_length=64)
        return sample_batches(prepared, default_collator(tok), batch_size=4, n_batches=2, seed=seed)

    cur, prev = batches("x", 1), batches("z", 2)
    lora = LoraConfig(r=4, lora_alpha=2, target_modules=TARGETS, lora_dropout=0.0, use_rslora=True)
    base = get_peft_model(conflicting_base(), lora)
    grads, _ = estimate_mean_gradients(base, cur, target_weights(base, adapter_name="default"))
    assert all(g.dtype == torch.float32 for g in grads.values())  # bf16 weights, fp32 accumulation
    inits = {}
    for dtype in ("float32", "bfloat16"):
        model = copy.deepcopy(base)
        report = SliceInitializer(InitConfig(method="slice", projection=projection, prev_grad_dtype=dtype,
                                             cur_steps=2, prev_steps=2, batch_size=4))(model, "default", cur, prev)
        assert report.surgery["fired"], dtype  # G_prev really enters the init
        inits[dtype] = {n: (m.lora_B["default"].weight.detach(), m.lora_A["default"].weight.detach())
                        for n, m in lora_layers(model, "default").items()}
    cos = [0.5 * (_subspace_cos(inits["bfloat16"][n][0], inits["float32"][n][0])
                  + _subspace_cos(inits["bfloat16"][n][1].T, inits["float32"][n][1].T)) for n in inits["float32"]]
    # bench_init's target; measured 0.9989 (global) and 0.9959 (per module) here, where the projection acts on
    # every module (the README's 0.99999 is SmolLM2's, where it acted on 3 of 210)
    assert sum(cos) / len(cos) >= 0.99, cos
