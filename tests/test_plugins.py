"""A package of the user's own extends every plug-in point from outside the repository.

The test writes a tiny package into a temporary folder: one module registering an initialiser, a
continual strategy, a task source and a metric, plus the ``*.dist-info`` folder an installer would
write (``entry_points.txt``, one group per kind). With that folder on ``PYTHONPATH`` of a subprocess
it is "installed"; ``python -m slice_trl.run`` then checks the plug-ins' names like built-in ones
(``--dry-run``: a misspelt one is refused with the close match) and runs them on a tiny random Llama.
Each plug-in leaves a trace that is checked against its own closed form.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A demo plug-in: one initialiser, one strategy, one task source and one metric."""
from dataclasses import dataclass, field

import torch
from datasets import Dataset

from slice_trl.initializers.base import InitReport, module_entry
from slice_trl.models.lora import lora_layers, write_and_absorb
from slice_trl.strategies.base import Strategy, StrategyConfig, register
from slice_trl.tasks.base import make_task, user_prompt_example
from slice_trl.utils.registry import initializers, metrics, task_sources

A_VALUE = 0.01


@initializers.register("const_a", display_name="constant A")
class ConstantA:
    """A = 0.01 everywhere, B = 0: the model's function is unchanged."""

    def __init__(self, config):
        self.config = config

    def __call__(self, model, adapter_name, current_batches=None, previous_batches=None):
        report = InitReport("const_a", adapter_name)
        for name, layer in lora_layers(model, adapter_name).items():
            a = torch.full_like(layer.lora_A[adapter_name].weight, A_VALUE, dtype=torch.float32)
            b = torch.zeros_like(layer.lora_B[adapter_name].weight, dtype=torch.float32)
            write_and_absorb(layer, adapter_name, a, b)
            report.modules[name] = module_entry(a, b, None, False)
        return report


@dataclass
class CountConfig(StrategyConfig):
    step: int = field(default=1, metadata={"help": "Added to the counter after every optimiser step."})


@register
class CountSteps(Strategy):
    """Counts optimiser steps in its saved state."""

    name = "count_steps"
    config_cls = CountConfig

    def post_step(self, ctx, model):
        old = self.state.get("steps", torch.zeros(1))
        self.state["steps"] = old + self.config.step


WORDS = ["apple", "stone", "river", "cloud", "maple", "tiger", "olive", "piano", "lemon", "grape"]


def validate_echo(spec):
    if spec.path is not None or spec.dataset_id is not None:
        raise spec.error("source='echo' is generated in code: remove path= and dataset_id=.")
    if spec.task not in ("upper", "lower"):
        raise spec.error(f"task={spec.task!r}: choose 'upper' or 'lower'.")


@task_sources.register("echo", validate=validate_echo)
def load_echo(spec, options):
    case = str.upper if spec.task == "upper" else str.lower
    rows = [{"word": WORDS[i % len(WORDS)] + str(i)} for i in range(40)]

    def to_parts(row):
        def render(pieces):
            return user_prompt_example(pieces[0], case(row["word"]))

        return [f"Repeat in {spec.task} case: {row['word']}"], render

    n_eval = spec.max_eval
    return make_task(options.name, rows[n_eval:], rows[:n_eval], to_parts, spec.metric or "len_ratio",
                     {"source": "echo"}, options)


@metrics.register("len_ratio")
def len_ratio(pred, ref):
    """min(len) / max(len) of the two strings (1 for two empty ones)."""
    return min(len(pred), len(ref)) / max(len(pred), len(ref), 1)
'''

ENTRY_POINTS = """\
[slice_trl.initializers]
const_a = slice_plugin_demo

[slice_trl.strategies]
count_steps = slice_plugin_demo

[slice_trl.task_sources]
echo = slice_plugin_demo

[slice_trl.metrics]
len_ratio = slice_plugin_demo
"""


def _install(site: Path) -> None:
    """What ``pip install`` of the demo package would leave in ``site``: the module and its dist-info."""
    site.mkdir()
    (site / "slice_plugin_demo.py").write_text(PLUGIN)
    info = site / "slice_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slice-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)


def _recipe(tmp_path: Path, out_dir: Path, method: str = "const_a") -> Path:
    from slice_trl.utils.testing import tiny_llama, tiny_recipe_yaml, tiny_tokenizer

    base = tmp_path / "tiny-llama"
    if not base.exists():
        tiny_llama(seed=3).save_pretrained(base)
        tiny_tokenizer().save_pretrained(base)
    text = tiny_recipe_yaml(base, out_dir, extra="strategy: {name: count_steps, step: 1}\n")
    builtin = ("  - {name: first, source: builtin, max_train: 16, max_eval: 4}\n"
               "  - {name: last, source: builtin, max_train: 16, max_eval: 4}\n")
    assert builtin in text and "init: {method: slice, c: 1.0," in text
    text = text.replace(builtin, "  - {name: up, source: echo, task: upper, max_train: 16, max_eval: 4, metric: len_ratio}\n"
                                 "  - {name: low, source: echo, task: lower, max_train: 16, max_eval: 4, metric: len_ratio}\n")
    text = text.replace("init: {method: slice, c: 1.0,", f"init: {{method: {method},")
    path = tmp_path / f"{method}.yaml"
    path.write_text(text)
    return path


def _run(site: Path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO_ROOT)]), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "slice_trl.run", *map(str, args)], capture_output=True, text=True,
                          timeout=900, cwd=str(REPO_ROOT), env=env)


def test_an_installed_plugin_package_adds_each_kind_and_runs(tmp_path):
    site = tmp_path / "site"
    _install(site)
    out_dir = tmp_path / "run"

    # checked like a built-in: a misspelt plug-in name is refused before any model loads
    bad = _run(site, _recipe(tmp_path, out_dir, method="const_b"), "--dry-run")
    assert bad.returncode != 0
    assert "init.method='const_b' is unknown" in bad.stderr + bad.stdout
    assert "Did you mean 'const_a'?" in bad.stderr + bad.stdout

    recipe = _recipe(tmp_path, out_dir)
    dry = _run(site, recipe, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "Recipe OK: 2 tasks, init=const_a" in dry.stdout

    real = _run(site, recipe)
    assert real.returncode == 0, real.stderr[-3000:]
    results = json.loads((out_dir / "results.json").read_text())
    assert results["task_names"] == ["up", "low"] and results["completed"] == 2
    stages = sorted((out_dir / "stages").iterdir())
    assert [p.name for p in stages] == ["01-up", "02-low"]
    steps_per_stage = 16 // 4  # max_train / per_device_train_batch_size, one epoch
    for t, stage in enumerate(stages):
        record = json.loads((stage / "record.json").read_text())
        # the task source's examples: the references are its words in its case
        preds = record["predictions"][record["task"]]
        case = str.upper if record["task"] == "up" else str.lower
        assert len(preds) == 4 and all(p["reference"] == case(p["reference"]) and p["reference"][-1].isdigit()
                                       for p in preds)
        # the metric: every example's score is len_ratio's closed form, and R's entry is their mean
        for p in preds:
            assert p["score"] == min(len(p["prediction"]), len(p["reference"])) / max(
                len(p["prediction"]), len(p["reference"]), 1)
        assert results["R"][t][t] == pytest.approx(sum(p["score"] for p in preds) / len(preds))
        # the initialiser: the adapter every stage starts from is A = 0.01, B = 0
        init = load_file(str(stage / "init_adapter" / "adapter_model.safetensors"))
        a = [v for k, v in init.items() if "lora_A" in k]
        b = [v for k, v in init.items() if "lora_B" in k]
        assert len(a) == len(b) == 14  # 7 target modules x 2 layers
        assert all(torch.all(v == torch.tensor(0.01, dtype=v.dtype)) for v in a)
        assert all(not v.any() for v in b)
        # the strategy: its post_step ran once per optimiser step, counted in its saved state
        state = load_file(str(stage / "strategy_state.safetensors"))
        assert state["steps"].item() == steps_per_stage * (t + 1)
    run_info = json.loads((out_dir / "run.json").read_text())
    assert run_info["init"]["method"] == "const_a" and run_info["strategy"]["name"] == "count_steps"


def test_a_registry_refuses_a_second_owner_of_a_name_and_an_unknown_trait():
    from slice_trl.utils.registry import Registry, initializers

    reg = Registry("widget", "slice_trl.utils", "slice_trl.widgets", "widget.name", defaults={"fast": False})

    @reg.register("w1", fast=True)
    def one():
        return 1

    assert reg.get("w1").obj is one and reg.get("w1").fast is True and "w1" in reg
    reg.register("w1", fast=True)(one)  # the same object again (a module imported twice) is harmless

    def other():
        return 2

    with pytest.raises(ValueError, match="widget 'w1' is registered twice"):
        reg.register("w1")(other)
    with pytest.raises(TypeError, match=r"unknown traits \['slow'\]"):
        reg.register("w2", slow=True)
    with pytest.raises(ValueError, match=r"widget.name='w' is unknown \(no such widget\).*Choose one of \['w1'\]"):
        reg.get("w")
    # a finished run's record may name an initialiser not installed here: its traits fall back
    assert initializers.trait("not_installed", "display_name") is None
    assert initializers.trait("slice", "display_name") == "SLICE"
