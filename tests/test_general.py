"""General ability (GP/IP) as the paper reports it: our Alpaca task scores a hand-computed
ROUGE-L case through lm-eval, the local-data templates keep lm-eval's own formats, the base
model is scored once and reused on resume, per-stage GP/IP, change = final - base, the heatmap
panel, and unresolvable benchmarks stop a run before any model loads (also under --dry-run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from paper_benchmarks import ALPACA, local_benchmark_files, write_jsonl
from test_evaluation import DOCS, write_task, zero_shot_by_hand

from slice_trl.configs.config import EvalConfig
from slice_trl.evaluation import evaluate_general_lm
from slice_trl.evaluation.general import LOCAL_TEMPLATES, PAPER_BENCHMARKS, package_task_dir

pytestmark = pytest.mark.usefixtures("restore_root_logger")

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# The Alpaca task through the harness, with a scripted model
# ---------------------------------------------------------------------------------------------

ANSWERS = {"Describe where the cat is.": "a cat sat on the mat today",
           "Name the capital of France.": "The capital of France is Paris"}
# ROUGE-L F = 2PR/(P+R) from the longest common subsequence of lower-cased words:
#   "a cat sat on the mat today" vs "the cat sat on the mat": LCS "cat sat on the mat" = 5,
#   P = 5/7, R = 5/6 -> F = 10/13;
#   "the capital of france is paris" vs "paris is the capital of france": LCS "the capital of
#   france" = 4, P = R = 4/6 -> F = 2/3.
HAND_ROUGE_L = (10 / 13 + 2 / 3) / 2
DESCRIPTION = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n")


def scripted_lm(answers: dict[str, str]):
    """An lm-eval model that answers each generation request by the LAST instruction in its
    context (few-shot contexts hold earlier examples first) and records the contexts."""
    from lm_eval.api.model import LM

    class Scripted(LM):
        contexts: list[tuple[str, dict]] = []

        def loglikelihood(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            out = []
            for req in requests:
                context, gen_kwargs = req.args
                self.contexts.append((context, gen_kwargs))
                last = re.findall(r"### Instruction:\n(.*?)\n", context)[-1]
                out.append(answers[last])
            return out

    return Scripted()


def test_alpaca_task_scores_a_hand_computed_rouge_l_case(tmp_path):
    data = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    cfg = EvalConfig(lm_eval_tasks=["slice_alpaca"], lm_eval_local_data={"slice_alpaca": str(data)},
                     lm_eval_num_fewshot=1)
    lm = scripted_lm(ANSWERS)
    out = evaluate_general_lm(lm, cfg)
    zero, few = out["zero_shot"]["slice_alpaca"], out["few_shot"]["slice_alpaca"]
    assert zero["metric"] == few["metric"] == "rougeL,none"
    assert zero["n"] == few["n"] == 2 and (zero["num_fewshot"], few["num_fewshot"]) == (0, 1)
    assert zero["score"] == pytest.approx(HAND_ROUGE_L) and few["score"] == pytest.approx(HAND_ROUGE_L)
    assert out["GP"] == pytest.approx(HAND_ROUGE_L) and out["IP"] == pytest.approx(HAND_ROUGE_L)
    # Alpaca's own template, greedy, stopping at the next header
    contexts = dict(lm.contexts[:2])
    cat = next(c for c in contexts if "cat" in c)
    assert cat == DESCRIPTION + "### Instruction:\nDescribe where the cat is.\n\n### Response:\n"
    paris = next(c for c in contexts if "France" in c)
    assert paris.endswith("### Instruction:\nName the capital of France.\n\n### Input:\nAnswer in one sentence.\n\n"
                          "### Response:\n")
    assert "###" in contexts[cat]["until"] and contexts[cat]["do_sample"] is False
    # 1-shot: the other record (never the scored one) with its answer, then the question
    shot_contexts = [c for c, _ in lm.contexts[2:]]
    cat_shot = next(c for c in shot_contexts if c.endswith("Describe where the cat is.\n\n### Response:\n"))
    assert cat_shot.startswith(DESCRIPTION) and "Paris is the capital of France.\n\n### Instruction" in cat_shot


def test_alpaca_fixed_sample_is_seeded_and_capped():
    from datasets import Dataset

    from slice_trl.evaluation.general import ALPACA_SAMPLE, alpaca_docs

    big = Dataset.from_list([{"instruction": str(i), "input": "", "output": str(i)} for i in range(ALPACA_SAMPLE + 50)])
    first, again = alpaca_docs(big), alpaca_docs(big)
    assert len(first) == ALPACA_SAMPLE and first["instruction"] == again["instruction"]
    assert len(set(first["instruction"])) == ALPACA_SAMPLE
    small = big.select(range(5))
    assert sorted(alpaca_docs(small)["instruction"]) == [str(i) for i in range(5)]


# ---------------------------------------------------------------------------------------------
# Local-data templates keep lm-eval's own formats
# ---------------------------------------------------------------------------------------------

FORMAT_KEYS = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "description", "metric_list",
               "generation_kwargs", "fewshot_config", "num_fewshot")


def _lm_eval_builtin(name: str) -> dict:
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks = Path(lm_eval.__file__).parent / "tasks"
    path = {"hellaswag": tasks / "hellaswag" / "hellaswag.yaml",
            "commonsense_qa": tasks / "commonsense_qa" / "default.yaml",
            "bbh_fewshot_object_counting": tasks / "bbh" / "fewshot" / "object_counting.yaml"}[name]
    return load_yaml(path, resolve_func=False)


@pytest.mark.parametrize("name", ["hellaswag", "commonsense_qa", "bbh_fewshot_object_counting"])
def test_local_templates_have_lm_evals_own_format(name):
    from lm_eval.tasks._yaml_loader import load_yaml

    ours = load_yaml(Path(package_task_dir()).parent / "lm_eval_local" / LOCAL_TEMPLATES[name], resolve_func=False)
    theirs = _lm_eval_builtin(name)
    for key in FORMAT_KEYS:
        assert ours.get(key) == theirs.get(key), key
    assert ours["dataset_path"] == "json" and ours["test_split"] == "test"  # the data is the user's file


def test_paper_recipes_run_the_papers_benchmarks_and_shots():
    from slice_trl.cli.recipe import load_recipe

    # the SLICE paper's own sequences; the field's benchmark recipes (superni15_*, long_sequence_*,
    # standard_cl_*) follow their anchors, which report no GP/IP
    paper = [p for p in sorted((REPO_ROOT / "recipes").glob("*.yaml")) if p.stem.startswith(("ni_seq_", "trace"))]
    assert len(paper) == 6
    for path in paper:
        ev = load_recipe(path, for_this_machine=False).training.evaluation
        assert ev.lm_eval_tasks == list(PAPER_BENCHMARKS), path.name
        assert ev.lm_eval_metrics == {k: m for k, (m, _) in PAPER_BENCHMARKS.items()}, path.name
        assert {k: ev.lm_eval_fewshot_overrides.get(k, ev.lm_eval_num_fewshot) for k in ev.lm_eval_tasks} == \
            {k: s for k, (_, s) in PAPER_BENCHMARKS.items()}, path.name
        assert PAPER_BENCHMARKS["bbh_fewshot_object_counting"][1] == 3 and ev.lm_eval_num_fewshot == 5


# ---------------------------------------------------------------------------------------------
# The trainer: base model once (cached, reused on resume), per-stage GP/IP, change from base
# ---------------------------------------------------------------------------------------------

MC_DOCS = DOCS[:4]


def local_mc_task(folder: Path, name: str = "slice_test_mc") -> str:
    """A local multiple-choice lm-eval task (our own YAML over a JSON-lines file)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_task(folder, name, write_jsonl(folder / "mc.jsonl", MC_DOCS))
    return name


def two_task_trainer(out_dir: Path, tasks_dir: Path, every_stage: bool):
    from test_trainer import constant_task, lora, make_config

    from slice_trl.utils.testing import tiny_llama, tiny_tokenizer
    from slice_trl.trainer.continual_sft_trainer import ContinualSFTTrainer

    name = local_mc_task(tasks_dir)
    evaluation = {"max_samples": 4, "batch_size": 4, "max_new_tokens": 4, "lm_eval_tasks": [name],
                  "lm_eval_include_path": str(tasks_dir), "lm_eval_num_fewshot": 1,
                  "lm_eval_metrics": {name: "acc_norm"}, "general_every_stage": every_stage}
    tasks = [constant_task("yes", "yes", n_train=8, n_eval=2), constant_task("no", "no", n_train=8, n_eval=2,
                                                                            offset=100)]
    init = {"method": "slice", "cur_steps": 1, "prev_steps": 1, "batch_size": 4, "micro_batch_size": 4}
    return ContinualSFTTrainer(model=tiny_llama(seed=1), args=make_config(out_dir, evaluation=evaluation, init=init),
                               tasks=tasks, peft_config=lora(), processing_class=tiny_tokenizer())


@pytest.fixture
def counted_general(monkeypatch):
    """Counts the harness runs of the trainer (one per evaluate_general call)."""
    import slice_trl.trainer.continual_sft_trainer as trainer_mod

    calls = []
    real = trainer_mod.evaluate_general

    def counting(model, tokenizer, cfg, accelerator=None):
        calls.append(1)
        return real(model, tokenizer, cfg, accelerator)

    monkeypatch.setattr(trainer_mod, "evaluate_general", counting)
    return calls


def test_base_once_per_stage_when_asked_change_from_base_and_reused_on_resume(tmp_path, counted_general,
                                                                               one_torch_thread):
    from slice_trl.utils.testing import tiny_llama, tiny_tokenizer

    out_dir, tasks_dir = tmp_path / "run", tmp_path / "lm_eval"
    out = two_task_trainer(out_dir, tasks_dir, every_stage=True).train()
    assert len(counted_general) == 3  # the base model, after stage 1, after stage 2

    cached = json.loads((out_dir / "base" / "general.json").read_text())
    base = cached["scores"]
    # the base entry is the untrained base model's score (acc_norm computed directly)
    assert base["zero_shot"]["slice_test_mc"]["score"] == pytest.approx(
        zero_shot_by_hand(tiny_llama(seed=1).eval(), tiny_tokenizer(), MC_DOCS)[1])  # acc_norm
    records = [json.loads(p.read_text()) for p in sorted((out_dir / "stages").glob("*/record.json"))]
    assert [r["general"]["stage"] for r in records] == [1, 2]
    for record in records:
        g = record["general"]
        assert g["base"]["GP"] == base["GP"] and g["base"]["IP"] == base["IP"]
        assert g["change"] == {"GP": g["GP"] - base["GP"], "IP": g["IP"] - base["IP"]}
        bench = g["benchmarks"]["slice_test_mc"]  # one benchmark: its scores are GP and IP themselves
        assert bench == {"metric": "acc_norm", "shots": {"GP": 0, "IP": 1}, "GP": g["GP"], "IP": g["IP"],
                         "base": {"GP": base["GP"], "IP": base["IP"]},
                         "change": {"GP": g["GP"] - base["GP"], "IP": g["IP"] - base["IP"]}}
    results = json.loads((out_dir / "results.json").read_text())
    assert results["general"] == records[-1]["general"] == out.general  # one set of numbers everywhere
    assert results["general"]["GP"] == records[-1]["general"]["GP"]

    # rerun on the finished run: nothing is scored again, the numbers are the stored ones
    mtime = (out_dir / "base" / "general.json").stat().st_mtime_ns
    again = two_task_trainer(out_dir, tasks_dir, every_stage=True).train()
    assert len(counted_general) == 3 and again.general == out.general
    # an unfinished last stage: retrained and scored; the cached base model's scores are reused
    import shutil

    shutil.rmtree(next((out_dir / "stages").glob("02-*")))
    resumed = two_task_trainer(out_dir, tasks_dir, every_stage=True).train()
    assert len(counted_general) == 4
    assert (out_dir / "base" / "general.json").stat().st_mtime_ns == mtime
    assert resumed.general["base"]["GP"] == base["GP"]
    # a cache measured on another base model is not reused
    cache = out_dir / "base" / "general.json"
    cache.write_text(json.dumps({**json.loads(cache.read_text()), "base_model": "someone/another-model"}))
    two_task_trainer(out_dir, tasks_dir, every_stage=True).train()
    assert len(counted_general) == 5 and json.loads(cache.read_text())["base_model"] != "someone/another-model"


def test_without_every_stage_only_the_last_stage_carries_gp_ip(tmp_path, counted_general, one_torch_thread):
    out_dir = tmp_path / "run"
    out = two_task_trainer(out_dir, tmp_path / "lm_eval", every_stage=False).train()
    assert len(counted_general) == 2  # base + after the last stage
    records = [json.loads(p.read_text()) for p in sorted((out_dir / "stages").glob("*/record.json"))]
    assert "general" not in records[0] and records[1]["general"]["stage"] == 2
    assert out.general == records[1]["general"]
    assert out.general["change"]["GP"] == out.general["GP"] - out.general["base"]["GP"]


def test_cached_base_scores_match_only_the_same_settings(tmp_path):
    """A cached base result measured with other GP/IP settings is not reused (the trainer's rule:
    `stages.base_measurement` keyed by `general.settings`)."""
    from slice_trl.trainer import stages
    from slice_trl.evaluation import general

    path, measured = tmp_path / "general.json", []

    def reused(cfg) -> bool:
        n = len(measured)
        stages.base_measurement(path, {"settings": general.settings(cfg)}, lambda: measured.append(1) or {"scores": {}})
        return len(measured) == n

    cfg = EvalConfig(lm_eval_tasks=["a"], lm_eval_num_fewshot=5)
    assert not reused(cfg)  # nothing cached yet
    assert reused(cfg)
    assert not reused(EvalConfig(lm_eval_tasks=["a"], lm_eval_num_fewshot=3))
    assert not reused(EvalConfig(lm_eval_tasks=["a", "b"], lm_eval_num_fewshot=5))


# ---------------------------------------------------------------------------------------------
# Heatmap panel
# ---------------------------------------------------------------------------------------------

def test_heatmap_gains_a_gp_ip_panel(tmp_path):
    from PIL import Image

    from slice_trl.evaluation.results import ResultsMatrix

    R = ResultsMatrix(["a", "b"])
    R.set_row(0, [0.5])
    R.set_row(1, [0.25, 0.75])
    g = {"GP": 0.4, "IP": 0.5, "base": {"GP": 0.5, "IP": 0.45}, "change": {"GP": -0.1, "IP": 0.05}}
    plain = Image.open(R.heatmap(tmp_path / "plain.png"))
    panel = Image.open(R.heatmap(tmp_path / "panel.png", general={1: g}))
    assert panel.size[0] > plain.size[0] + 150  # a second panel to the right
    assert Image.open(R.heatmap(tmp_path / "none.png", general={})).size == plain.size


# ---------------------------------------------------------------------------------------------
# Before any model loads (also under --dry-run): unresolvable benchmarks, bad local data
# ---------------------------------------------------------------------------------------------

def test_paper_recipe_runs_its_benchmarks_from_local_files_under_dry_run(tmp_path, capsys, no_model_loading):
    from slice_trl import run as run_mod

    files = local_benchmark_files(tmp_path / "data")
    override = json.dumps(files)
    # exit 3 (issue 27): the benchmarks resolve, but the recipe's Hub model is not readable offline
    assert run_mod.main([str(REPO_ROOT / "recipes" / "trace.yaml"), "--dry-run", "--output_dir", str(tmp_path / "o"),
                         "--evaluation.lm_eval_local_data", override]) == 3
    out = capsys.readouterr().out
    assert "Recipe OK" in out and "not checked: model config of 'meta-llama/" in out
    assert "lm-eval" not in out  # every benchmark was checked


def test_unresolvable_benchmark_is_one_line_before_any_model_loads(tmp_path, capsys, no_model_loading):
    from slice_trl import run as run_mod

    files = local_benchmark_files(tmp_path / "data")
    del files["commonsense_qa"]
    files["slice_alpaca"] = str(tmp_path / "missing.jsonl")
    recipe = [str(REPO_ROOT / "recipes" / "trace.yaml"), "--dry-run", "--output_dir", str(tmp_path / "o"),
              "--evaluation.lm_eval_local_data", json.dumps(files)]
    assert run_mod.main(recipe) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: evaluation.lm_eval_tasks: evaluation.lm_eval_local_data['slice_alpaca']")
    assert "is not a file" in err

    # a local task whose data file is gone: named, with the fix
    tasks_dir = tmp_path / "own"
    name = local_mc_task(tasks_dir, "slice_gone_mc")
    (tasks_dir / "mc.jsonl").unlink()
    quick = [str(REPO_ROOT / "recipes" / "quickstart.yaml"), "--dry-run", "--output_dir", str(tmp_path / "q"),
             "--evaluation.lm_eval_tasks", f"[{name}]", "--evaluation.lm_eval_include_path", str(tasks_dir),
             "--evaluation.lm_eval_metrics", "{}"]
    assert run_mod.main(quick) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1]
    assert err.startswith("error: evaluation.lm_eval_tasks: lm-eval task 'slice_gone_mc': its data could not be "
                          "loaded") and "Fix: point evaluation.lm_eval_include_path" in err
    # and a real run stops there too, before the tokenizer or the model
    assert run_mod.main([a for a in quick if a != "--dry-run"]) == 2


def test_quickstart_smoke_check_resolves_offline(tmp_path, capsys, no_model_loading):
    from slice_trl import run as run_mod

    path = REPO_ROOT / "recipes" / "quickstart.yaml"
    assert run_mod.main([str(path), "--dry-run", "--output_dir", str(tmp_path / "q")]) == 0
    text = path.read_text()
    assert "SMOKE CHECK, not the paper's benchmarks" in text


@pytest.mark.parametrize("bad, message", [
    ({"lm_eval_tasks": ["a"], "lm_eval_local_data": {"hellaswag": "/x.jsonl"}},
     r"lm_eval_local_data names tasks not in lm_eval_tasks: \['hellaswag'\]"),
    ({"lm_eval_tasks": ["hellaswag"], "lm_eval_local_data": {"hellaswag": ""}},
     r"lm_eval_local_data\['hellaswag'\]='' must be the path"),
    ({"lm_eval_tasks": ["hellaswag"], "lm_eval_local_data": ["x"]}, "must be a mapping"),
])
def test_bad_local_data_settings(bad, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**bad)


def test_local_data_for_a_benchmark_without_template(tmp_path):
    from slice_trl.evaluation.general import write_local_tasks

    data = write_jsonl(tmp_path / "x.jsonl", [{"a": 1}])
    with pytest.raises(ValueError, match=r"lm_eval_local_data\['arc_easy'\]: no local template"):
        write_local_tasks({"arc_easy": str(data)}, tmp_path)


def test_paper_recipe_offline_without_local_benchmarks_stops_naming_one(tmp_path, capsys, no_model_loading):
    """This machine has no network: the Hub copy of HellaSwag cannot be reached."""
    from slice_trl import run as run_mod

    assert run_mod.main([str(REPO_ROOT / "recipes" / "trace.yaml"), "--dry-run",
                         "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: evaluation.lm_eval_tasks: lm-eval task 'hellaswag': its data "
                                               "could not be loaded")
    assert "Fix: give a local copy with evaluation.lm_eval_local_data: {hellaswag: /path/hellaswag.jsonl}" in err[0]


def test_cli_run_prints_and_stores_the_smoke_check(tmp_path, capsys, one_torch_thread):
    """The quickstart's smoke tasks through `slice_trl.run` on a tiny model: sizes, where the
    numbers are written, and the console line."""
    from test_run import tiny_recipe

    from slice_trl import run as run_mod
    from slice_trl.cli.recipe import load_recipe

    out_dir = tmp_path / "run"
    recipe = load_recipe(tiny_recipe(tmp_path, out_dir), [
        "--evaluation.lm_eval_tasks", "[slice_smoke_choice, slice_smoke_alpaca]", "--evaluation.lm_eval_num_fewshot", "1"])
    out = run_mod.run(recipe)
    g = json.loads((out_dir / "results.json").read_text())["general"]
    assert g == out.general and g["stage"] == 2
    assert {k: v["n"] for k, v in g["zero_shot"].items()} == {"slice_smoke_choice": 8, "slice_smoke_alpaca": 4}
    assert {k: v["num_fewshot"] for k, v in g["few_shot"].items()} == {"slice_smoke_choice": 1, "slice_smoke_alpaca": 1}
    assert g["benchmarks"]["slice_smoke_alpaca"]["metric"] == "rougeL"
    assert g["benchmarks"]["slice_smoke_alpaca"]["GP"] == g["zero_shot"]["slice_smoke_alpaca"]["score"]
    base = json.loads((out_dir / "base" / "general.json").read_text())["scores"]
    assert g["change"] == {"GP": g["GP"] - base["GP"], "IP": g["IP"] - base["IP"]}
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("GP "))
    assert line.startswith(f"GP {100 * g['GP']:.1f} (base {100 * base['GP']:.1f}, {100 * g['change']['GP']:+.1f})  "
                           f"IP {100 * g['IP']:.1f} (base {100 * base['IP']:.1f}")
    assert line.endswith("(x100, after stage 2; slice_smoke_choice, slice_smoke_alpaca)")


def test_stage_line_shows_gp_ip_when_measured():
    from slice_trl.utils.console import stage_line

    g = {"GP": 0.40, "IP": 0.55, "stage": 2, "base": {"GP": 0.5, "IP": 0.5}, "change": {"GP": -0.1, "IP": 0.05},
         "tasks": ["hellaswag"]}
    record = {"stage": 2, "task": "last", "init": {"method": "vanilla"}, "scores": {"first": 0.5, "last": 1.0}}
    assert stage_line(record, 3) == "stage 2/3 last [vanilla]  scores x100: first 50.0  last 100.0"
    assert stage_line({**record, "general": g}, 3) == (
        "stage 2/3 last [vanilla]  scores x100: first 50.0  last 100.0  GP 40.0 (base 50.0, -10.0)  "
        "IP 55.0 (base 50.0, +5.0)")


def test_too_few_fewshot_examples_is_one_line_before_any_model_loads(tmp_path, capsys, no_model_loading):
    from slice_trl import run as run_mod

    quick = str(REPO_ROOT / "recipes" / "quickstart.yaml")
    assert run_mod.main([quick, "--dry-run", "--output_dir", str(tmp_path / "q"),
                         "--evaluation.lm_eval_num_fewshot", "5"]) == 0  # the default IP shots fit the smoke tasks
    capsys.readouterr()
    assert run_mod.main([quick, "--dry-run", "--output_dir", str(tmp_path / "q"),
                         "--evaluation.lm_eval_num_fewshot", "6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: evaluation.lm_eval_tasks: lm-eval task 'slice_smoke_choice' has 5 few-shot examples, fewer "
                   "than IP's 6 shots need (6). Fix: set evaluation.lm_eval_fewshot_overrides: {slice_smoke_choice: 5} "
                   "or a smaller evaluation.lm_eval_num_fewshot, or give the task more examples."]
    # a local file is both the scored split and the few-shot pool: a record is never its own example
    data = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)  # 2 records: at most 1 shot
    local = ["--evaluation.lm_eval_tasks", "[slice_alpaca]", "--evaluation.lm_eval_metrics", "{}",
             "--evaluation.lm_eval_local_data", json.dumps({"slice_alpaca": str(data)})]
    assert run_mod.main([quick, "--dry-run", "--output_dir", str(tmp_path / "q"), *local,
                         "--evaluation.lm_eval_num_fewshot", "2"]) == 2
    assert "'slice_alpaca' has 2 few-shot examples, fewer than IP's 2 shots need (3). Fix: set " \
           "evaluation.lm_eval_fewshot_overrides: {slice_alpaca: 1}" in capsys.readouterr().err
    assert run_mod.main([quick, "--dry-run", "--output_dir", str(tmp_path / "q"), *local,
                         "--evaluation.lm_eval_num_fewshot", "1"]) == 0
