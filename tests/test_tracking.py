"""Tracking (README "Tracking"): a continual run is one tracker run with one step axis, carrying R,
AP/FP/forgetting, GP/IP and the SLICE gate. Read back from what the trackers wrote: TensorBoard's
event files (tensorboard's EventAccumulator) and trackio's local store (trackio's SQLite reader, in
a process of its own: tests/tracking_worker.py), and compared with results.json and the stage records."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback
from transformers.integrations import integration_utils

from slice_trl.utils import console
from slice_trl.configs.config import ContinualSFTConfig

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["yes", "no", "maybe"]
STEPS = 6  # optimiser steps per stage: 24 train examples / batch 4, one epoch (tests/test_trainer.make_config)
TOTAL = 3 * STEPS


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """tests/tracking_worker.py: a full 3-task run and a run killed in stage 2 then resumed, both
    with report_to [tensorboard, trackio], trackio's store in the test's folder."""
    root = tmp_path_factory.mktemp("tracking")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRACKIO_DIR": str(root / "trackio"), "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "tracking_worker.py"), str(root)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return root


def events(run_dir: Path):
    """(the one TensorBoard log dir of the run, its EventAccumulator)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracking = json.loads((run_dir / "run.json").read_text())["tracking"]
    logdir = run_dir / tracking["tensorboard_dir"]
    assert {p.parent for p in run_dir.rglob("events.out.tfevents*")} == {logdir}  # one log dir: one stream
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return logdir, acc


def scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def text(acc, tag: str) -> str:
    return acc.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


def records(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / "stages" / f"{t + 1:02d}-{n}" / "record.json").read_text())
            for t, n in enumerate(NAMES)]


def trackio_rows(root: Path, name: str) -> list[dict]:
    runs = json.loads((root / f"{name}.trackio.json").read_text())
    assert len(runs) == 1, runs.keys()  # one tracker run for the whole sequence (also across the resume)
    return next(iter(runs.values()))


def points(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if key in r]


def same(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    """Equal steps, equal values (TensorBoard keeps float32)."""
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6, abs=1e-7)


def check_continual_quantities(get, run_dir: Path, last_steps: list[int]):
    """``get(key) -> [(step, value)]`` of one tracker against results.json and the records: each
    stage's scores, AP/FP/forgetting at its last step, R_0 at step 0, the gate at the step the
    stage starts from, the final summary."""
    results = json.loads((run_dir / "results.json").read_text())
    recs = records(run_dir)
    for j, name in enumerate(NAMES):
        expected = [(0, results["base"][j])] + [(last_steps[t], results["R"][t][j]) for t in range(j, 3)]
        same(get(f"eval/{name}"), expected)
    for key in ("AP", "FP", "forgetting"):
        same(get(f"eval/{key}"), [(last_steps[t], recs[t][key]) for t in range(3)])
        same(get(f"eval/final/{key}"), [(last_steps[-1], results[key])])
    starts = [0] + last_steps[:2]
    for key in ("gamma", "frac_negative_modules", "fired"):
        same(get(f"train/init/{key}"), [(starts[t], float(recs[t]["init"]["surgery"][key])) for t in range(3)])
    # the cosine needs an earlier task (None at stage 1: not logged)
    same(get("train/init/cosine"), [(starts[t], recs[t]["init"]["surgery"]["cosine"]) for t in (1, 2)])
    assert [s for s, _ in get("train/init/seconds/grad_cur")] == starts


@pytest.mark.slow
def test_tensorboard_one_event_stream_with_R_forgetting_and_the_gate(runs):
    run_dir = runs / "full"
    _, acc = events(run_dir)
    loss_steps = [s for s, _ in scalars(acc, "train/loss")]
    assert loss_steps == list(range(1, TOTAL + 1))  # logging_steps 1: every step once, across the stages
    assert [v for _, v in scalars(acc, "train/stage")[::7]] == [1, 2, 3]  # steps 1, 7, 13 (7 logs per stage)
    check_continual_quantities(lambda key: scalars(acc, key), run_dir, [STEPS, 2 * STEPS, 3 * STEPS])
    assert "results/heatmap" in acc.Tags()["images"]
    table = text(acc, "results/R")
    results = json.loads((run_dir / "results.json").read_text())
    assert f"| stage 3 (maybe) | {100 * results['R'][2][0]:.1f} |" in table
    config = json.loads(text(acc, "args"))  # the config, once, with its sections and the task sequence
    assert config["init.method"] == "slice" and config["tasks"] == "yes, no, maybe" and config["num_tasks"] == 3
    assert len(acc.Tensors("args/text_summary")) == 1


@pytest.mark.slow
def test_trackio_local_store_has_the_same_keys_at_the_same_steps(runs):
    run_dir = runs / "full"
    rows = trackio_rows(runs, "full")
    assert [s for s, _ in points(rows, "train/loss")] == list(range(1, TOTAL + 1))
    check_continual_quantities(lambda key: points(rows, key), run_dir, [STEPS, 2 * STEPS, 3 * STEPS])
    media = [r for r in rows if "results/R" in r]
    assert len(media) == 1 and media[0]["step"] == TOTAL and "results/heatmap" in media[0]
    tracking = json.loads((run_dir / "run.json").read_text())["tracking"]
    assert tracking["trackio_project"] == "full" and tracking["last_step"] == TOTAL


@pytest.mark.slow
def test_killed_in_stage_2_and_resumed_logs_no_step_twice(runs):
    run_dir = runs / "resumed"
    _, acc = events(run_dir)
    assert len(list(run_dir.rglob("events.out.tfevents*"))) == 2  # one file per process, same log dir
    # stage 2 was killed after its optimiser step 2 (run steps 7, 8); its rerun follows them
    killed = 2
    last_steps = [STEPS, 2 * STEPS + killed, 3 * STEPS + killed]
    tb_loss = [s for s, _ in scalars(acc, "train/loss")]
    rows = trackio_rows(runs, "resumed")
    io_loss = [s for s, _ in points(rows, "train/loss")]
    for loss_steps in (tb_loss, io_loss):
        assert loss_steps == list(range(1, TOTAL + killed + 1))  # strictly increasing: nothing twice
    for get in (lambda key: scalars(acc, key), lambda key: points(rows, key)):
        check_continual_quantities(get, run_dir, last_steps)  # stage 1's points once, R_0 once


class Recorder(TrainerCallback):
    """A report_to integration as transformers builds them (how wandb/mlflow reach the same code path
    here, where neither is installed): records what it is given."""

    instances = []

    def __init__(self):
        self.events, self.config = [], None
        Recorder.instances.append(self)

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append(("begin", state.global_step))
        self.config = args.to_dict()

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append(("end", state.global_step))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append(("log", state.global_step, dict(logs)))


def test_any_integration_gets_one_run_and_one_step_axis(tmp_path, monkeypatch):
    from test_trainer import build, three_tasks

    monkeypatch.setitem(integration_utils.INTEGRATION_TO_CALLBACK, "recorder", Recorder)
    Recorder.instances.clear()
    out = build(tmp_path, tasks=three_tasks()[:2], report_to=["recorder"], logging_steps=2,
                init={"method": "lora_ga", "cur_steps": 1, "batch_size": 4}).train()
    (rec,) = Recorder.instances
    assert [e[0] for e in rec.events if e[0] != "log"] == ["begin", "end"]  # started and ended once
    logs = [e for e in rec.events if e[0] == "log"]
    loss_steps = [step for _, step, log in logs if "loss" in log]
    assert loss_steps == [2, 4, 6, 8, 10, 12]  # logging_steps 2 over 2 stages of 6 steps
    assert [step for _, step, _ in logs] == sorted(step for _, step, _ in logs)
    assert [(step, log["eval_yes"]) for _, step, log in logs if "eval_yes" in log] == pytest.approx(
        [(STEPS, out.results[0, 0]), (2 * STEPS, out.results[1, 0])])
    assert rec.config["init.method"] == "lora_ga" and rec.config["tasks"] == "yes, no"
    assert rec.config["strategy.name"] is None and "init" not in rec.config
    tracking = json.loads((tmp_path / "run.json").read_text())["tracking"]
    assert tracking["report_to"] == ["recorder"] and tracking["last_step"] == 2 * STEPS
    assert tracking["run_name"].startswith(tmp_path.name)
    # the finished run, rerun: resumes every stage and logs nothing again
    build(tmp_path, tasks=three_tasks()[:2], report_to=["recorder"], logging_steps=2,
          init={"method": "lora_ga", "cur_steps": 1, "batch_size": 4}).train()
    assert Recorder.instances[1].events == []


def test_unknown_report_to_is_one_line_naming_the_valid_ones(tmp_path, capsys, no_model_loading,
                                                           restore_root_logger):
    from slice_trl import run as run_mod

    with pytest.raises(ValueError, match=r"report_to='tensorbord' is not a tracker transformers supports\. "
                                         r"Did you mean 'tensorboard'\? Choose from .*trackio, wandb, or 'all'"):
        ContinualSFTConfig(output_dir=str(tmp_path), report_to=["tensorbord"])
    quickstart = ROOT / "recipes" / "quickstart.yaml"
    for flags in (["--dry-run"], []):
        argv = [str(quickstart), *flags, "--output_dir", str(tmp_path / "o"), "--report_to", "wandbb"]
        assert run_mod.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "report_to='wandbb'" in err[0] and "Did you mean 'wandb'?" in err[0]


@pytest.mark.skipif(__import__("importlib").util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_that_is_not_installed_names_the_pip_command(tmp_path, capsys, no_model_loading,
                                                              restore_root_logger):
    from slice_trl import run as run_mod

    quickstart = ROOT / "recipes" / "quickstart.yaml"
    assert run_mod.main([str(quickstart), "--dry-run", "--output_dir", str(tmp_path), "--report_to", "wandb"]) == 2
    assert capsys.readouterr().err.strip() == ("error: report_to='wandb': wandb is not installed here; install it "
                                               "with `pip install wandb`, or remove 'wandb' from report_to.")


def test_progress_line_estimates_the_time_left_from_the_finished_stages():
    # stage k: fixed 100 s (init 20 + train 70 + save 10) plus 5 s of evaluation per scored task
    recs = [{"stage": k, "timings": {"init": 20.0, "train": 70.0, "save_merge": 10.0, "eval": 5.0 * k}}
            for k in (1, 2)]
    # stages 3, 4, 5 left: 3 x 100 + 5 x (3 + 4 + 5) = 360 s
    assert console.seconds_left(recs, 5) == pytest.approx(360.0)
    assert console.progress_line(recs, 5, 215.0) == ("progress: 2/5 stages done, 3 min 35 s elapsed, "
                                                     "about 6 min 0 s left")
    assert console.progress_line(recs, 2, 4000.0) == "progress: 2/2 stages done, 1 h 06 min elapsed"


def test_stage_line_of_initialisers_without_surgery_claims_no_projection():
    def line(method, stage, c=1.0):
        record = {"stage": stage, "task": "t", "scores": {"t": 0.5},
                  "init": {"method": method, "surgery": {"c": c, "cosine": None, "gamma": 0.0, "fired": False}}}
        return console.stage_line(record, 5)

    assert line("lora_ga", 3) == "stage 3/5 t [lora_ga]  scores x100: t 50.0"
    assert "projection not applied (no earlier task)" in line("slice", 1)
    assert "projection not applied (c = 0)" in line("slice", 3, c=0.0)
    assert "projection not applied (no replay batches)" in line("slice", 3)


def test_tracking_changes_nothing_in_training(tmp_path, monkeypatch):
    """The same 2-task run with and without trackers: bitwise equal weights and R."""
    import torch
    from test_trainer import build, three_tasks

    monkeypatch.setitem(integration_utils.INTEGRATION_TO_CALLBACK, "recorder", Recorder)
    runs = []
    for report_to in ([], ["tensorboard", "recorder"]):
        trainer = build(tmp_path / str(len(report_to)), tasks=three_tasks()[:2], report_to=report_to)
        runs.append((trainer.train().results.to_dict(), trainer.model.state_dict()))
    (r0, w0), (r1, w1) = runs
    assert r0 == r1 and w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert list((tmp_path / "2").rglob("events.out.tfevents*")) and not list((tmp_path / "0").rglob("events*"))
