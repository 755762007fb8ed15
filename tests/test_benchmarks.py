"""The field's continual benchmarks (issue 28): named sequences, the O-LoRA/SAPT folder source with
the benchmark's own split, the authors' scorer, the field's metrics on hand-computed R matrices,
and evaluation.every / score_upcoming in a real (tiny) run."""

import json
from pathlib import Path

import pytest
import yaml

from slice_trl.evaluation import cl_metrics
from slice_trl.configs.config import EvalConfig
from slice_trl.evaluation.metrics import rouge_l, sni_exact_match, sni_normalize, sni_rouge_l
from slice_trl.evaluation.schedule import task_evaluations, tasks_to_score
from slice_trl.evaluation.results import ResultsMatrix
from slice_trl.tasks import TaskSpec, build_task
from slice_trl.tasks.cl_benchmark import load_cl_benchmark_task
from slice_trl.tasks.sequences import BENCHMARKS, SEQUENCES, expand_sequence, lookup

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data from the main checkout, ../../shared/data from a worktree under wt/
SHARED = next((p for p in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data") if p.is_dir()),
              ROOT.parent / "shared" / "data")
needs_data = pytest.mark.skipif(not (SHARED / "superni15").is_dir(), reason="shared benchmark data not present")

# A hand-computed 3-task case. R (rows = after stage i):
#   0.8
#   0.5  0.6
#   0.4  0.3  0.9       base R_0 = [0.1, 0.2, 0.3], upcoming R[0][1] = 0.4, R[1][2] = 0.1
R3 = [[0.8], [0.5, 0.6], [0.4, 0.3, 0.9]]


def test_field_metrics_hand_computed():
    # Last = (0.4 + 0.3 + 0.9) / 3; Avg = (0.8 + 0.55 + 1.6/3) / 3
    assert cl_metrics.last(R3) == pytest.approx(1.6 / 3)
    assert cl_metrics.avg(R3) == pytest.approx((0.8 + 0.55 + 1.6 / 3) / 3)
    # BWT (GEM) = ((0.4 - 0.8) + (0.3 - 0.6)) / 2; SAPT's = the same sum / 3 (the last term is 0)
    assert cl_metrics.bwt(R3) == pytest.approx(-0.35)
    assert cl_metrics.bwt_sapt(R3) == pytest.approx(-0.7 / 3)
    # F.Ra = ((max(0.8, 0.5) - 0.4) + (0.6 - 0.3)) / 2
    assert cl_metrics.f_ra(R3) == pytest.approx(0.35)
    # FWT = ((0.4 - 0.2) + (0.1 - 0.3)) / 2
    assert cl_metrics.fwt(R3, [0.1, 0.2, 0.3], {1: 0.4, 2: 0.1}) == pytest.approx(0.0)
    assert cl_metrics.fwt(R3, [0.1, 0.2, 0.3], {1: 0.5, 2: 0.4}) == pytest.approx(0.2)


def test_field_metrics_na_never_zero():
    assert cl_metrics.fwt(R3, None, {1: 0.4, 2: 0.1}) is None          # no R_0
    assert cl_metrics.fwt(R3, [0.1, 0.2, 0.3], {1: 0.4}) is None       # R[1][2] missing
    assert all(v is None for k, v in cl_metrics.field_metrics([[0.5]]).items() if k not in ("Last", "Avg"))
    gappy = [[0.8], [None, 0.6], [0.4, 0.3, 0.9]]                       # evaluation.every left R[1][0] out
    assert cl_metrics.avg(gappy) is None and cl_metrics.last(gappy) == pytest.approx(1.6 / 3)
    assert cl_metrics.f_ra(gappy) == pytest.approx(((0.8 - 0.4) + (0.6 - 0.3)) / 2)


def test_sapt_bwt_is_minus_forgetting_and_last_is_fp():
    rm = ResultsMatrix(["a", "b", "c"])
    for i, row in enumerate(R3):
        rm.set_row(i, row)
    s = rm.summary()
    assert s["BWT_SAPT"] == pytest.approx(-s["forgetting"]) and s["Last"] == pytest.approx(s["FP"])
    assert s["FWT"] is None and s["F_Ra"] == pytest.approx(sum(s["per_task_forgetting"].values()) / 2)


def test_results_matrix_upcoming_and_unscored_round_trip():
    rm = ResultsMatrix(["a", "b", "c"])
    rm.set_base([0.1, 0.2, 0.3])
    rm.record_stage(0, {"a": 0.8, "b": 0.4})            # b scored before it is trained
    rm.record_stage(1, {"b": 0.6, "c": 0.1})            # a not scored at this stage (evaluation.every)
    assert rm[1, 0] is None and rm.unscored == [(1, 0)] and rm.fp() is None and rm.forgetting() is None
    rm.record_stage(2, {"a": 0.4, "b": 0.3, "c": 0.9})
    d = rm.to_dict()
    assert d["R"][0][1] is None and d["upcoming"] == [None, 0.4, 0.1] and d["unscored"] == [[1, 0]]
    back = ResultsMatrix.from_dict(json.loads(json.dumps(d)))
    assert back == rm and back.upcoming == {1: 0.4, 2: 0.1} and back.summary()["FWT"] == pytest.approx(0.0)
    assert "(40.0)" in rm.table() and "FWT +0.0" in rm.table()
    with pytest.raises(ValueError, match="diagonal"):
        ResultsMatrix(["a", "b"]).record_stage(0, {"b": 0.5})
    with pytest.raises(ValueError, match="only tasks"):
        rm2 = ResultsMatrix(["a", "b", "c"])
        rm2.record_stage(0, {"a": 0.5, "c": 0.5})
    # an old results.json (no upcoming/unscored keys) still loads, its R unchanged
    old = {"task_names": ["a", "b"], "R": [[0.5, None], [0.25, 0.75]], "completed": 2, "AP": 0.625}
    assert ResultsMatrix.from_dict(old).to_dict() == {k: old[k] for k in ("task_names", "R", "completed")}


def test_schedule_cost():
    assert task_evaluations(15, EvalConfig()) == 120                     # T(T+1)/2
    assert task_evaluations(15, EvalConfig(score_upcoming=True, score_base=True)) == 120 + 14 + 15
    # every 5: stages 5, 10, 15 score all seen tasks (5 + 10 + 15), the other 12 their own task only
    assert task_evaluations(15, EvalConfig(every=5)) == 42
    assert tasks_to_score(1, 15, EvalConfig(every=5)) == [1]
    assert tasks_to_score(4, 15, EvalConfig(every=5, score_upcoming=True)) == [0, 1, 2, 3, 4, 5]
    assert tasks_to_score(14, 15, EvalConfig(every=4, score_upcoming=True)) == list(range(15))
    with pytest.raises(ValueError, match="every"):
        EvalConfig(every=0)


# ------------------------------------------------------------------ the authors' scorer
@pytest.mark.parametrize("pred, ref, expected", [
    ("Entailment.", "entailment", 1.0),          # punctuation dropped, lower-cased
    ("  not   entailment ", "Not entailment", 1.0),
    ("It's", "its", 1.0),                         # the apostrophe is punctuation
    ("neutral", "entailment", 0.0),
    ("the answer", "answer", 0.0),                # articles are kept (SQuAD's rule without article removal)
])
def test_sni_exact_match(pred, ref, expected):
    assert sni_exact_match(pred, ref) == expected


def test_sni_rouge_l_hand_computed_and_unlike_ours():
    # stemmed tokens: pred [the, cat, were, run], ref [the, cat, run]: LCS 3, P = 3/4, R = 1, F = 6/7
    assert sni_rouge_l("The cats were running", "the cat runs") == pytest.approx(6 / 7)
    # ours does not stem: LCS [the] only -> P = 1/4, R = 1/3, F = 2/7
    assert rouge_l("The cats were running", "the cat runs") == pytest.approx(2 / 7)
    assert sni_normalize(" A  B-c, d ") == "a bc d"


# ------------------------------------------------------------------ sequences
def test_sequences_lookup_and_errors():
    assert len(expand_sequence("superni15/order1")) == 15 and len(SEQUENCES["long_sequence/order4"][0].orders["order4"]) == 15
    with pytest.raises(ValueError, match="Did you mean 'superni15/order1'"):
        lookup("supernl15/order1")
    with pytest.raises(ValueError, match="no order 'order3'.*Its orders: \['superni15/order1'"):
        lookup("superni15/order3")
    entries = expand_sequence({"name": "standard_cl/order2", "max_train": 8})
    assert [e["path"] for e in entries] == ["dbpedia", "amazon", "agnews", "yahoo"]
    assert all(e["max_train"] == 8 and e["metric"] == "sni_exact_match" for e in entries)


@pytest.mark.parametrize("bench, order, recipe", [("ni_seq", n, f"ni_seq_{n}") for n in ("g1", "g2", "opp1", "opp2",
                                                                                      "opp3")] + [("trace", "order1", "trace")])
def test_paper_orders_equal_the_paper_recipes(bench, order, recipe):
    recipe = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    assert tuple(t["path"] for t in recipe["tasks"]) == BENCHMARKS[bench].orders[order]


def test_benchmark_recipes_name_their_sequence():
    for name, (bench, order) in SEQUENCES.items():
        if bench.source == "cl_benchmark":
            assert yaml.safe_load((ROOT / "recipes" / f"{bench.name}_{order}.yaml").read_text())["sequence"] == name


# ------------------------------------------------------------------ the folder source on real data
@needs_data
def test_superni15_task_uses_the_benchmarks_own_split():
    folder = SHARED / "superni15" / "task181_outcome_extraction"
    n_train, n_test = (len(json.loads((folder / f).read_text())["Instances"]) for f in ("train.json", "test.json"))
    task = load_cl_benchmark_task(folder, max_eval=None)
    assert (len(task.train), len(task.eval)) == (n_train, n_test) == (338, 43)
    test_inputs = {i["input"] for i in json.loads((folder / "test.json").read_text())["Instances"]}
    assert all(ex["prompt"][0]["content"].split("Input: ", 1)[1].rsplit("\nOutput: ", 1)[0] in test_inputs
               for ex in task.eval)
    assert task.metric == "sni_rougeL" and task.eval[0]["prompt"][0]["content"].startswith("Definition: ")
    capped = load_cl_benchmark_task(folder, max_train=10, max_eval=200)
    assert len(capped.train) == 10 and len(capped.eval) == 43 and "fewer than max_eval=200" in capped.info["notes"][0]


def test_off_label_predictions_are_counted_and_score_zero():
    from test_trainer import constant_task

    from slice_trl.evaluation import evaluate_task
    from slice_trl.utils.testing import tiny_llama, tiny_tokenizer

    task = constant_task("yn", "yes", n_train=2, n_eval=6)
    task.metric, task.info["labels"] = "sni_exact_match", ["Yes", "no"]
    score = evaluate_task(tiny_llama(seed=1), tiny_tokenizer(), task, EvalConfig(max_samples=6, max_new_tokens=4))
    outside = [p for p in score.predictions if sni_normalize(p["prediction"]) not in ("yes", "no")]
    assert score.off_label == len(outside) and all(p["score"] == 0.0 for p in outside)


@needs_data
def test_label_task_and_off_label_count():
    task = build_task(TaskSpec(source="cl_benchmark", path=str(SHARED / "long_sequence"), task="cb", max_eval=4))
    assert task.metric == "sni_exact_match" and task.info["labels"] == ["entailment", "contradiction", "neutral"]
    assert len(task.eval) == 4 and task.eval[0]["prompt"][0]["content"].endswith("\nOutput: ")


def test_bad_folders(tmp_path):
    (tmp_path / "t1").mkdir()
    (tmp_path / "t1" / "test.json").write_text('{"Definition": ["d"], "Instances": []}')
    with pytest.raises(ValueError, match="has no train.json.*Get the data from SAPT"):
        TaskSpec(source="cl_benchmark", path=str(tmp_path / "t1"), origin="SAPT")
    good = {"Definition": ["d"], "Instances": [{"input": f"x{i}", "output": "a"} for i in range(3)]}
    (tmp_path / "t1" / "train.json").write_text(json.dumps(good))
    (tmp_path / "t1" / "test.json").write_text(json.dumps(good))
    (tmp_path / "t1" / "labels.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="labels.json.*must be a JSON list"):
        load_cl_benchmark_task(tmp_path / "t1")


# ------------------------------------------------------------------ the command line
@needs_data
def test_dry_run_lists_superni15_and_names_absent_long_sequence_tasks(capsys, monkeypatch):
    from slice_trl.run import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # exit 3 (issue 27): valid, but the offline Hub model's config and tokenizer are not readable here
    assert main(["recipes/superni15_order2.yaml", "--dry-run", "--data_dir", str(SHARED / "superni15")]) == 3
    out = capsys.readouterr().out
    assert "1. task748_glucose_reverse_cause_event_detection" in out and "15. task875_emotion_classification" in out
    assert "task1590_diplomacy_text_generation: source=cl_benchmark" in out and "train 126, eval 16, metric sni_rougeL" in out
    assert main(["recipes/long_sequence_order4.yaml", "--dry-run", "--data_dir", str(SHARED / "long_sequence")]) == 3
    out = capsys.readouterr().out
    assert "Task data not on this machine (10)" in out and "yelp" in out and "github.com/circle-hit/SAPT" in out


@pytest.mark.parametrize("override, message", [
    (["--sequence", "superni15/ordr1"], "Did you mean 'superni15/order1'"),
    (["--sequence", "long_sequence/order1"], "long_sequence has no order 'order1'"),
])
def test_bad_sequence_is_one_line(capsys, override, message):
    from slice_trl.run import main

    assert main(["recipes/superni15_order1.yaml", "--dry-run", *override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_list_sequences(capsys):
    from slice_trl.run import main

    assert main(["--list-sequences"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SEQUENCES) and "O-LoRA" in out


# ------------------------------------------------------------------ a real run: FWT and evaluation.every
def test_score_upcoming_gives_fwt_and_every_marks_unscored(tmp_path):
    from test_trainer import build, constant_task

    from slice_trl.evaluation import evaluate_task
    from slice_trl.utils.testing import tiny_llama, tiny_tokenizer
    from slice_trl.trainer.continual_sft_trainer import ContinualSFTTrainer

    class Probe(ContinualSFTTrainer):
        """Scores the next task itself once a stage is on disk (the model that R[t][t+1] must describe)."""

        direct = {}

        def after_stage(self, t, record):
            if t + 1 < len(self.tasks):
                Probe.direct[t + 1] = evaluate_task(self.model, self.processing_class, self.tasks[t + 1],
                                                    self.args.evaluation).score

    tasks = [constant_task("yes", "yes"), constant_task("yes_again", "yes", offset=100),
             constant_task("no", "no", offset=200)]
    cfg = {"max_samples": 6, "batch_size": 3, "max_new_tokens": 6, "score_base": True, "score_upcoming": True,
           "every": 3}
    out = build(tmp_path, tasks=tasks, cls=Probe, evaluation=cfg).train()
    saved = json.loads((tmp_path / "results.json").read_text())
    records = [json.loads((tmp_path / "stages" / d / "record.json").read_text())
               for d in sorted(p.name for p in (tmp_path / "stages").iterdir())]
    # every 3 of 3 stages: stages 1 and 2 score their own task (+ the next one), stage 3 all
    assert [sorted(r["scores"]) for r in records] == [["yes", "yes_again"], ["no", "yes_again"],
                                                      ["no", "yes", "yes_again"]]
    assert saved["unscored"] == [[1, 0]] and saved["R"][1][0] is None and saved["FP"] is not None
    base = [evaluate_task(tiny_llama(seed=1), tiny_tokenizer(), t, EvalConfig(**cfg)).score for t in tasks]
    assert saved["base"] == pytest.approx(base)
    assert saved["upcoming"] == [None, Probe.direct[1], Probe.direct[2]]
    assert saved["FWT"] == pytest.approx(((Probe.direct[1] - base[1]) + (Probe.direct[2] - base[2])) / 2)
    assert out.results.summary()["FWT"] == pytest.approx(saved["FWT"]) and saved["Avg"] is None


def test_bad_folder_and_labels_are_one_line_before_any_model(tmp_path, capsys):
    from slice_trl.cli.recipe import RecipeError, load_recipe
    from slice_trl.run import main

    good = {"Definition": ["d"], "Instances": [{"input": f"x{i}", "output": "a"} for i in range(3)]}
    for name in ("t1", "t2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test.json").write_text(json.dumps(good))
    (tmp_path / "t2" / "train.json").write_text(json.dumps(good))
    (tmp_path / "t2" / "labels.json").write_text('"a"')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": "smollm2-135m-instruct", "data_dir": str(tmp_path),
                                      "output_dir": str(tmp_path / "out"),
                                      "tasks": [{"source": "cl_benchmark", "path": "t1"}]}))
    with pytest.raises(RecipeError, match="t1' has no train.json"):
        load_recipe(recipe)
    recipe.write_text(recipe.read_text().replace("path: t1", "path: t2"))
    assert main([str(recipe), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "labels.json' must be a JSON list" in err and len(err.splitlines()) == 1


def test_stage_line_marks_the_score_before_training():
    from slice_trl.utils.console import stage_line

    line = stage_line({"stage": 1, "task": "a", "scores": {"a": 0.5, "b": 0.25}, "init": {"method": "vanilla"}}, 3)
    assert line.endswith("a 50.0  b 25.0 (before training)")
