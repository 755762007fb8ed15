"""Nothing half-done claims to be done (issue 27): the fingerprint covers the model settings that
change numbers, finished stage files carry a content hash checked on resume, --overwrite moves only a
slice-trl run, Ctrl-C is one line, a failure before stage 1 trains does not block the corrected rerun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hostile import refused, save_tiny_base, set_key, write_recipe
from slice_trl import run as run_mod
from slice_trl.utils.testing import tiny_recipe_yaml

pytestmark = pytest.mark.usefixtures("restore_root_logger")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base"))


def test_overwrite_moves_only_a_slice_trl_run(tmp_path, tiny_base, capsys, no_model_loading):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    recipe = write_recipe(tmp_path, tiny_base, {"output_dir": str(out)})
    capsys.readouterr()
    code = run_mod.main([str(recipe), "--overwrite"])
    err = capsys.readouterr().err.strip()
    refused(code, err, ["output_dir", str(out)])
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "recipe.yaml"]  # nothing moved aside



# ------------------------------------------------------------------------------ for real: nothing half-done
def _real(capsys, recipe, *overrides) -> tuple[int, str]:
    capsys.readouterr()
    code = run_mod.main([str(recipe), *map(str, overrides)])
    return code, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_base):
    """A finished 2-stage tiny run (1 step per stage), copied by each test that damages it. Every
    write of results.json is checked as it happens: each stage it names has its record on disk."""
    from slice_trl.utils.run_folder import RunFolder

    tmp = tmp_path_factory.mktemp("finished")
    recipe = tmp / "recipe.yaml"
    recipe.write_text(set_key(tiny_recipe_yaml(tiny_base, tmp / "out"), "max_steps", "1"))
    real_write, written = RunFolder.write_results, []

    def checked_write(self, payload):
        names = payload["task_names"][:payload["completed"]]
        assert all(self.stage(t, n).record.is_file() for t, n in enumerate(names)), f"{names}: a record is missing"
        assert all(v is None for row in payload["R"][payload["completed"]:] for v in row)  # no later stage scored
        written.append(payload["completed"])
        real_write(self, payload)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunFolder, "write_results", checked_write)
        assert run_mod.main([str(recipe)]) == 0
    assert written == [1, 2, 2]  # after each stage, and once at the end
    return recipe, tmp / "out"


def test_results_name_only_recorded_stages_and_records_hash_their_files(finished_run):
    """(the order is checked in the fixture) every finished stage's record holds the sha256 of each file it wrote."""
    import hashlib

    from slice_trl.utils.run_folder import RunFolder

    stages = RunFolder(finished_run[1]).finished_stages()
    assert len(stages) == 2
    for stage in stages:
        kept = stage.read_record()["files_sha256"]
        on_disk = sorted(p.relative_to(stage.path).as_posix() for p in stage.path.rglob("*")
                         if p.is_file() and p.name != "record.json")
        assert sorted(kept) == on_disk and "adapter_original_base/adapter_model.safetensors" in kept
        assert all(hashlib.sha256((stage.path / n).read_bytes()).hexdigest() == h for n, h in kept.items())


def _copy_run(finished_run, tmp_path) -> Path:
    recipe, out = finished_run
    shutil.copytree(out, tmp_path / "out")
    copy = tmp_path / "recipe.yaml"
    copy.write_text(recipe.read_text().replace(str(out), str(tmp_path / "out")))
    return copy


@pytest.mark.parametrize("override", [["--dtype", "bfloat16"], ["--attn_implementation", "eager"]],
                         ids=["dtype", "attn_implementation"])
def test_model_settings_that_change_numbers_are_fingerprinted(tmp_path, finished_run, capsys, override):
    recipe = _copy_run(finished_run, tmp_path)
    before = (tmp_path / "out" / "run.json").read_bytes()
    code, err = _real(capsys, recipe, *override)
    refused(code, err, [override[0].lstrip("-")])
    assert (tmp_path / "out" / "run.json").read_bytes() == before


def test_every_model_setting_is_fingerprinted_unless_documented():
    """Derived from TRL's ModelConfig: a field it adds is fingerprinted without an edit here."""
    from dataclasses import fields

    from trl import ModelConfig

    from slice_trl.models import integrity

    base = ModelConfig(model_name_or_path="m")
    fp = integrity.model_fingerprint(base)
    assert set(fp) == {f.name for f in fields(ModelConfig)} - integrity.IGNORED_MODEL_KEYS
    assert {"dtype", "attn_implementation", "model_revision"} <= set(fp)
    # trust_remote_code is a TrainingArguments field in this TRL (not ModelConfig's): the training section has it
    from slice_trl.configs.config import ContinualSFTConfig

    assert "trust_remote_code" in integrity.training_fingerprint(ContinualSFTConfig(output_dir="o", use_cpu=True))
    # model keys are compared at the top level, as a recipe gives them: no name may be both kinds
    assert not set(fp) & {f.name for f in fields(ContinualSFTConfig)}


def test_a_finished_adapter_damaged_in_place_is_named_on_resume(tmp_path, finished_run, capsys):
    recipe = _copy_run(finished_run, tmp_path)
    adapters = sorted((tmp_path / "out").rglob("adapter_model.safetensors"))
    assert adapters
    victim = adapters[0]
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF  # a weight byte, the size unchanged (the header still parses)
    victim.write_bytes(bytes(data))
    code, err = _real(capsys, recipe)
    refused(code, err, [victim.parent.name])


def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path, tiny_base, capsys, monkeypatch):
    import transformers

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.Trainer, "train", interrupted)
    recipe = write_recipe(tmp_path, tiny_base, {"max_steps": "1"})
    try:
        code, err = _real(capsys, recipe)
    except KeyboardInterrupt:  # a bare traceback for the user: caught here so the test session goes on
        pytest.fail("Ctrl-C escaped slice_trl.run.main as a traceback")
    assert code == 130
    assert len(err.splitlines()) == 1 and "interrupted" in err.lower() and "resume" in err.lower(), err


def test_a_failure_before_the_first_stage_trains_does_not_block_the_corrected_rerun(tmp_path, tiny_base, capsys,
                                                                                      monkeypatch):
    import transformers

    real_train = transformers.Trainer.train

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure in the first stage")

    monkeypatch.setattr(transformers.Trainer, "train", boom)
    recipe = write_recipe(tmp_path, tiny_base, {"max_steps": "1"})
    with pytest.raises(RuntimeError, match="simulated failure"):
        run_mod.main([str(recipe)])
    monkeypatch.setattr(transformers.Trainer, "train", real_train)
    code, err = _real(capsys, recipe, "--learning_rate", "2e-3")  # the corrected rerun, other settings
    assert code == 0, err
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert "2e-3" in json.dumps(run) or "0.002" in json.dumps(run)


# ------------------------------------------------------------------------------ the rules, without a run
def _fp(lr=1.0, dtype="float32"):
    return {"base_model": {"id": "m"}, "model": {"dtype": dtype}, "training": {"learning_rate": lr}}


def _run_dir(tmp_path, fingerprint, finished: bool, **extra):
    out = tmp_path / "out"
    (out / "stages" / "01-a" / "adapter").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"fingerprint": fingerprint, **extra}))
    if finished:
        (out / "stages" / "01-a" / "record.json").write_text("{}")
    return out


def test_a_run_that_finished_no_stage_restarts_whatever_its_settings(tmp_path):
    from slice_trl.models import integrity

    out = _run_dir(tmp_path, _fp(lr=1.0), finished=False, tracking={"wandb_run_id": "old"})
    (out / "base").mkdir()
    (out / "base" / "record.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    assert integrity.check_output_dir(out, _fp(lr=1.0), resume=True) == "resume"  # same settings: a resume
    assert integrity.check_output_dir(out, _fp(lr=2.0), resume=True) == "restart"
    integrity.discard_unfinished(out)
    assert sorted(p.name for p in out.iterdir()) == ["base", "notes.txt"]  # the old facts and partial stage gone
    assert integrity.check_output_dir(out, _fp(lr=2.0), resume=True) == "new"
    finished = _run_dir(tmp_path / "2", _fp(lr=1.0), finished=True)
    with pytest.raises(integrity.RunMismatchError, match=r"learning_rate: 1.0 -> 2.0"):
        integrity.check_output_dir(finished, _fp(lr=2.0), resume=True)  # a finished stage: never replaced silently
    with pytest.raises(integrity.RunMismatchError):
        integrity.discard_unfinished(finished)


def test_move_aside_refuses_a_folder_that_is_not_a_slice_trl_run(tmp_path):
    from slice_trl.models import integrity

    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    (home / "stages").mkdir()  # a slice-trl name among the user's files does not make it a run
    for refuse in (lambda: integrity.move_aside(home),
                   lambda: integrity.check_output_dir(home, _fp(), resume=False)):
        with pytest.raises(integrity.RunMismatchError, match=r"\.config.*nothing was moved"):
            refuse()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    # a run.json with a fingerprint is a run, whatever else is there (e.g. a tracker's folder)
    run = _run_dir(tmp_path / "r", _fp(), finished=True)
    (run / "wandb").mkdir()
    assert integrity.check_output_dir(run, _fp(), resume=False) == "replace"
    assert integrity.move_aside(run).name.startswith("out.replaced-")


def test_a_run_recorded_before_the_model_section_resumes_with_its_own_settings(tmp_path):
    """ADDED_KEYS: a stored fingerprint without ``model`` compares as ModelConfig's defaults, except
    where the recipe stored in the same run.json set a key."""
    from trl import ModelConfig

    from slice_trl.models import integrity

    old = {"training": {"learning_rate": 1.0}}
    new = {"training": {"learning_rate": 1.0}, "model": integrity.model_fingerprint(ModelConfig(model_name_or_path="m"))}
    assert integrity.differences(old, new) == []
    bf16 = {**new, "model": {**new["model"], "dtype": "bfloat16"}}
    assert integrity.differences(old, bf16) == ["dtype: 'float32' -> 'bfloat16'"]
    out = _run_dir(tmp_path, old, finished=True, recipe={"dtype": "bfloat16", "learning_rate": 1.0})
    assert integrity.check_output_dir(out, bf16, resume=True) == "resume"
    with pytest.raises(integrity.RunMismatchError, match=r"dtype: 'bfloat16' -> 'float32'"):
        integrity.check_output_dir(out, new, resume=True)
