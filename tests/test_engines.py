"""Every initialiser and strategy under the real engines: DDP, DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU
processes, each against a 1-process run (the README's compatibility table cites these tests).

One launch per engine runs all its configurations in one process group
(`tests/dist_worker.py engines`); one more 1-process run of the same worker (per-device batch 2 x
gradient accumulation 2 = the same global batch) is the reference. What is compared is what must
agree, never a score:

- DDP: everything bit for bit (adapters after the initialiser and after training, the merged
  model, the deployed model's logits, the saved strategy state): the same computation
  (test_distributed.py's docstring).
- ZeRO-2 / ZeRO-3: the ranks bit for bit with each other. Stage 1's initialisation runs before any
  DeepSpeed engine exists: bit for bit the reference's. DeepSpeed's optimiser step (its own
  gradient averaging, fp32 flat partitions) moves the trained weights by rounding (measured
  <= 3e-7 after 4 steps): trained adapters, merged model and logits agree to 1e-5. Stage 2 starts
  from those slightly different weights, and for the gradient-based initialisers a change of
  1e-8 flips the arbitrary signs of LoRA-GA's singular vectors (U[:, :r] and V[:, r:2r] come from
  different singular vectors), so their stage-2 factors are compared with the initialiser rerun
  on ONE process from the engine's own pre-stage weights and mini-batches: ZeRO-2 bit for bit
  (whole mini-batches per rank, one all-reduce of two sums), ZeRO-3 up to those signs (its linear
  layers compute dW in another order; measured 1.3e-5). Where no singular-vector sign enters
  (vanilla, KeepLoRA's frozen A with B trained from 0, InfLoRA, SLAO), stage 2's merged model and
  logits are compared with the reference directly (measured <= 1e-6; LoRAM 1.2e-3, its rescaled
  init trains faster). Every merge into the base must equal W + s B A computed from the same
  rank's trained adapter (the merge wrote through ZeRO-3's gathers).
- O-LoRA and EBLoRA edit gradients once per optimiser step, which DeepSpeed's step inside
  backward makes impossible: refused in one line before any model loads (tested below).

The tasks answer 'x' * 8 and 'z' * 8 on a tiny Llama whose LM-head rows for 'x' and 'z' are partly
opposite (`slice_trl.utils.testing.conflicting_tiny_llama`), so SLICE's surgery fires at stage 2, global
and per module (checked), and SLICE's stage-2 factors are not LoRA-GA's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dist_worker import ENGINE_CONFIGS, adapter_tensors, engine_args, engine_lora  # noqa: E402
from test_distributed import (  # noqa: E402
    CONFIGS,
    ROOT,
    WORKER,
    _accelerate,
    _assert_bitwise,
    _env,
    _max_diff,
    _sign_aligned_diff,
)

from slice_trl.strategies import engine_problem  # noqa: E402

ZERO_STAGE = {"ddp": None, "zero2": 2, "zero3": 3}
STAGES = ["01-xs", "02-zs"]  # the worker's tasks
RESCALED = ("slice", "slice_per_module", "lora_ga", "loram")  # factors from an SVD or DST-I, rescaled by Var(W)


def _bitwise(a, b, what: str) -> None:
    """`_assert_bitwise` for a dict of tensors or one tensor (the logits)."""
    _assert_bitwise(a if isinstance(a, dict) else {"": a}, b if isinstance(b, dict) else {"": b}, what)


def _diff(a, b) -> float:
    return _max_diff(a, b) if isinstance(a, dict) else float((a - b).abs().max())


def engine_configs(engine: str) -> list[str]:
    """The configurations that claim to run under ``engine`` (the others are refused)."""
    stage = ZERO_STAGE[engine]
    return [c for c, (_, strategy) in ENGINE_CONFIGS.items() if strategy is None or not engine_problem(strategy, stage)]


def _cpu_deepspeed_config(tmp: Path, stage: int) -> Path:
    """accelerate_configs/deepspeed_zero{2,3}.yaml as a CPU twin: no bf16 (gloo, CPU) and, for
    ZeRO-3, every parameter partitioned (persistence threshold 0; the default keeps a tiny
    model's small tensors whole)."""
    import json

    import yaml

    gpu = yaml.safe_load((CONFIGS / f"deepspeed_zero{stage}.yaml").read_text())
    zero = {"stage": stage, **({"stage3_param_persistence_threshold": 0} if stage == 3 else {})}
    ds = tmp / f"ds_zero{stage}.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                              "gradient_clipping": "auto", "bf16": {"enabled": False}, "zero_optimization": zero}))
    cfg = {k: gpu[k] for k in ("compute_environment", "distributed_type", "num_machines", "num_processes",
                               "machine_rank", "rdzv_backend", "same_network")}
    cfg.update(deepspeed_config={"deepspeed_config_file": str(ds), "zero3_init_flag": False}, use_cpu=False)
    path = tmp / f"cpu_zero{stage}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _engine_run(tmp: Path, launcher: list[str], configs: list[str], per_device: int, grad_accum: int) -> dict:
    """{config: {"out": its output_dir, "ranks": [per-rank dumps]}, "console": stdout + stderr}."""
    cmd = launcher + [str(WORKER), "engines", str(tmp / "dump"), str(tmp / "out"), str(per_device), str(grad_accum),
                      ",".join(configs)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    runs = {c: {"out": tmp / "out" / c, "ranks": [torch.load(p, weights_only=False)
                                                  for p in sorted((tmp / "dump" / c).glob("rank*.pt"))]}
            for c in configs}
    return {**runs, "console": proc.stdout + proc.stderr}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Every configuration on 1 process, per-device batch 2 x gradient accumulation 2."""
    return _engine_run(tmp_path_factory.mktemp("reference"), [sys.executable], list(ENGINE_CONFIGS), 2, 2)


def _launcher(engine: str, tmp: Path) -> list[str]:
    if engine == "ddp":
        return _accelerate(CONFIGS / "cpu_2proc.yaml")
    return _accelerate(_cpu_deepspeed_config(tmp, ZERO_STAGE[engine]))


def _rerun_init(dump: dict, config: str, tmp: Path, t: int = 1) -> tuple[dict, dict]:
    """The initialiser of ``config`` on ONE process, from the engine's own weights right before
    stage t+1 and its own mini-batches: (A, B by name, the report)."""
    from peft import get_peft_model

    from slice_trl.initializers import build_initializer
    from slice_trl.models.lora import ADAPTER
    from slice_trl.utils.testing import tiny_llama

    model = tiny_llama(seed=1)
    model.load_state_dict(dump["pre"][t])
    peft_model = get_peft_model(model, engine_lora())
    current, previous = dump["batches"][t]
    report = build_initializer(engine_args(str(tmp), config, 2, 2).init)(peft_model, ADAPTER, current, previous or None)
    return adapter_tensors(peft_model), report.to_dict()


def _assert_merge_closed_form(dump: dict, t: int, what: str) -> None:
    """merged W = W_base + s B A from the same rank's trained adapter (s = 1: rsLoRA, alpha 2, r 4)."""
    before, after = dump["prefinish"][t], dump["merged"][t]
    n = 0
    for key, a in before.items():
        if ".lora_A.default." not in key:
            continue
        prefix = key.split(".lora_A.")[0]
        b = before[f"{prefix}.lora_B.default.weight"]
        want = before[f"{prefix}.base_layer.weight"] + b @ a
        got = after[prefix.removeprefix("base_model.model.") + ".weight"]
        assert float((got - want).abs().max()) < 1e-6, f"{what}: {prefix}"
        n += 1
    assert n == 14, what  # 7 targets x 2 layers


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_every_initialiser_and_strategy_under_the_engine_matches_one_process(tmp_path, engine, reference):
    configs = engine_configs(engine)
    run = _engine_run(tmp_path, _launcher(engine, tmp_path), configs, per_device=2, grad_accum=1)
    check_engine_run(engine, configs, run, reference, tmp_path)
    # DDP is told that every trainable parameter is used (ContinualSFTConfig): no extra graph
    # traversal per step, and not PyTorch's warning about it on every rank
    assert "find_unused_parameters" not in run["console"]


def check_engine_run(engine: str, configs: list[str], run: dict, reference: dict, tmp_path: Path) -> None:
    for config in configs:
        (ref,), (r0, r1) = reference[config]["ranks"], run[config]["ranks"]
        merges_into_base = ENGINE_CONFIGS[config][1] != "slao"
        assert ref["world"] == 1 and r0["world"] == r1["world"] == 2, config
        assert r0["engine"] == ("MULTI_CPU" if engine == "ddp" else "DEEPSPEED"), config
        assert r0["zero_stage"] == ZERO_STAGE[engine], config
        assert ref["steps"] == r0["steps"] == 4, config  # 16 examples / global batch 4, per stage
        for kind in ("init", "prefinish", "merged", "logits"):
            for t in range(2):
                _bitwise(r0[kind][t], r1[kind][t], f"{engine} {config} {kind} stage {t + 1}: rank 0 vs 1")
        if engine == "ddp":
            for kind in ("init", "prefinish", "merged", "logits"):
                for t in range(2):
                    _bitwise(r0[kind][t], ref[kind][t], f"ddp {config} {kind} stage {t + 1}: vs 1 process")
            for stage in STAGES:
                if ENGINE_CONFIGS[config][1] is not None:
                    state = [load_file(str(x["out"] / "stages" / stage / "strategy_state.safetensors"))
                             for x in (reference[config], run[config])]
                    assert state[0], f"{config} saved no state at {stage}"
                    _bitwise(state[1], state[0], f"ddp {config} state {stage}: vs 1 process")
            continue
        # DeepSpeed
        assert r0["partitioned"] == {0: False, 1: engine == "zero3"}, config  # ZeRO-3: stage 2 on partitioned weights
        _bitwise(r0["init"][0], ref["init"][0], f"{engine} {config} stage 1 init: vs 1 process")
        for kind in ("prefinish", "merged", "logits"):
            assert _diff(r0[kind][0], ref[kind][0]) < 1e-5, f"{engine} {config} stage 1 {kind}"
        if config in RESCALED:
            factors, report = _rerun_init(r0, config, tmp_path / "rerun")
            if engine == "zero2":
                _bitwise(r0["init"][1], factors, f"zero2 {config} stage 2 init: rerun on 1 process")
            else:
                assert _sign_aligned_diff(r0["init"][1], factors) < 2e-3, config  # measured 1.0e-4
            got = r0["report"][1]
            if config.startswith("slice"):  # the surgery acted under the engine, and the rerun agrees
                assert got["surgery"]["fired"] and got["surgery"]["cosine"] < 0, config
                assert _diff(r0["init"][1], run["lora_ga"]["ranks"][0]["init"][1]) > 1e-2, config
            if report["surgery"] is not None:
                assert got["surgery"]["cosine"] == pytest.approx(report["surgery"]["cosine"], abs=1e-6), config
                assert got["surgery"]["fired"] == report["surgery"]["fired"], config
            for name, entry in report["modules"].items():
                # ZeRO-3: the randomised SVD (4 power iterations) carries G's ~1e-7 into beta (measured 3.6e-4)
                assert got["modules"][name]["beta"] == pytest.approx(entry["beta"], rel=1e-5 if engine == "zero2"
                                                                     else 2e-3), (config, name)
        else:  # no singular-vector sign enters: the whole second stage agrees with the reference
            assert _diff(r0["merged"][1], ref["merged"][1]) < 1e-4, f"{engine} {config} stage 2 merged"
            assert _diff(r0["logits"][1], ref["logits"][1]) < 1e-4, f"{engine} {config} stage 2 logits"
        if config == "loram":  # data-free, so comparable end to end too (measured 3.6e-4 / 1.2e-3 under ZeRO-3)
            assert _diff(r0["logits"][1], ref["logits"][1]) < 1e-2, f"{engine} loram stage 2 logits"
        if merges_into_base:
            for t in range(2):
                _assert_merge_closed_form(r0, t, f"{engine} {config} stage {t + 1}")


# ---------------------------------------------------------------------------------------------
# Combinations that cannot work: refused in one line before any model loads
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from slice_trl.utils.testing import tiny_llama, tiny_tokenizer

    base = tmp_path_factory.mktemp("base") / "tiny-llama"
    tiny_llama(seed=3).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    return base


def _launched(monkeypatch, stage: int | None, tmp: Path | None = None) -> None:
    """The environment `accelerate launch` gives a DeepSpeed run (utils/launch.py): the ZeRO stage,
    or with ``tmp`` a DeepSpeed JSON file naming it."""
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    if stage is None:
        return
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    if tmp is None:
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", str(stage))
    else:
        (tmp / "ds.json").write_text('{"zero_optimization": {"stage": %d}}' % stage)
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp / "ds.json"))


@pytest.mark.parametrize("strategy", ["olora", "eblora"])
@pytest.mark.parametrize("stage, from_file", [(2, False), (3, False), (3, True)])
def test_gradient_editing_strategy_is_refused_under_deepspeed(tmp_path, monkeypatch, capsys, no_model_loading,
                                                              tiny_checkpoint, strategy, stage, from_file):
    from slice_trl import run as run_mod
    from slice_trl.utils.testing import tiny_recipe_yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_yaml(tiny_checkpoint, tmp_path / "out", extra=f"strategy: {{name: {strategy}}}\n")
                      .replace("method: slice", "method: vanilla"))
    _launched(monkeypatch, None)
    assert run_mod.main([str(recipe), "--dry-run"]) == 0  # one process: fine
    capsys.readouterr()
    _launched(monkeypatch, stage, tmp_path if from_file else None)
    assert run_mod.main([str(recipe), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err == (f"error: strategy.name={strategy!r} edits the gradients once per optimiser step, but under "
                   f"DeepSpeed (ZeRO-{stage}) the optimiser steps inside backward, before that hook, and the edit would "
                   "be silently lost; launch it with DDP (accelerate_configs/multi_gpu.yaml) or as one process, or "
                   "choose a strategy that runs under DeepSpeed (inflora, keeplora, slao).")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("strategy", ["keeplora", "inflora", "slao"])
def test_other_strategies_pass_the_engine_check_under_zero3(tmp_path, monkeypatch, no_model_loading, tiny_checkpoint,
                                                            strategy):
    from slice_trl import run as run_mod
    from slice_trl.utils.testing import tiny_recipe_yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_yaml(tiny_checkpoint, tmp_path / "out", extra=f"strategy: {{name: {strategy}}}\n")
                      .replace("method: slice", "method: vanilla"))
    _launched(monkeypatch, 3)
    assert run_mod.main([str(recipe), "--dry-run"]) == 0


def test_the_trainer_refuses_the_same_combinations():
    """The Python API (no preflight) gets the same rule from `build_strategy`."""
    from slice_trl.strategies import StrategyConfig, build_strategy
    from slice_trl.utils.registry import strategies

    for name in strategies.names():
        config = StrategyConfig.from_dict({"name": name})
        assert build_strategy(config).name == name  # no DeepSpeed: every strategy
        for stage in (0, 2, 3):
            if name in ("olora", "eblora"):
                with pytest.raises(ValueError, match=f"strategy.name='{name}' edits the gradients.*ZeRO-{stage}"):
                    build_strategy(config, stage)
            else:
                assert build_strategy(config, stage).name == name
    assert sorted(c for c in ENGINE_CONFIGS if c not in engine_configs("zero3")) == ["eblora", "olora"]


def test_a_launched_run_prints_on_rank_0_only():
    """Quiet console (`console.configure`): rank 0 logs as one process does; other ranks errors only."""
    code = ("import logging, warnings; from slice_trl.utils import console; console.configure(verbose=False); "
            "log = logging.getLogger('slice_trl.x'); log.info('info line'); log.warning('warning line'); "
            "warnings.warn('python warning'); log.error('error line')")
    out = {}
    for rank in ("0", "1"):
        env = {**_env(), "RANK": rank}
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        out[rank] = proc.stderr
    assert all(x in out["0"] for x in ("info line", "warning line", "python warning", "error line"))
    assert "error line" in out["1"] and not any(x in out["1"] for x in ("info line", "warning line", "python warning"))


def test_ddp_is_told_that_no_trainable_parameter_is_unused(tmp_path):
    """transformers' default for a PeftModel is find_unused_parameters=True (a graph traversal every
    step, and PyTorch's warning on every rank); the recipe may still ask for it, and the key does not
    change the run's fingerprint (a run started before this default resumes)."""
    from slice_trl.models import integrity
    from slice_trl.configs.config import ContinualSFTConfig

    assert ContinualSFTConfig(output_dir=str(tmp_path), use_cpu=True).ddp_find_unused_parameters is False
    assert ContinualSFTConfig(output_dir=str(tmp_path), use_cpu=True,
                              ddp_find_unused_parameters=True).ddp_find_unused_parameters is True
    assert "ddp_find_unused_parameters" in integrity.IGNORED_KEYS
