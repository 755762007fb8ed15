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
    """A finished 2-stage tiny run (1 step per stage), copied by each test that damages it."""
    tmp = tmp_path_factory.mktemp("finished")
    recipe = tmp / "recipe.yaml"
    recipe.write_text(set_key(tiny_recipe_yaml(tiny_base, tmp / "out"), "max_steps", "1"))
    assert run_mod.main([str(recipe)]) == 0
    return recipe, tmp / "out"


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
    assert {"dtype", "attn_implementation", "model_revision", "trust_remote_code"} <= set(fp)


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
