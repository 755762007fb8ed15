"""Validation runs no code a recipe points to (issue 27): --dry-run never imports a model folder's
remote code or an lm-eval task's !function (marker files never appear), and it exits 2 on what a real
run would refuse, or 3 naming each check it could not make here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hostile import dry_run, refused, save_tiny_base, write_recipe
from slice_trl.utils.testing import tiny_recipe_yaml

pytestmark = pytest.mark.usefixtures("restore_root_logger")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base"))


# ------------------------------------------------------------------------------ validation runs no recipe code
def _remote_code_model(tmp_path: Path, tiny_base: Path) -> tuple[Path, Path]:
    """A copy of the tiny model whose config.json points to code in its own folder; that code
    writes a marker file when imported."""
    folder = tmp_path / "remote-model"
    shutil.copytree(tiny_base, folder)
    marker = tmp_path / "REMOTE_CODE_RAN"
    (folder / "configuration_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n\nclass EvilConfig(LlamaConfig):\n    model_type = 'llama'\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_dry_run_never_imports_a_models_remote_code(tmp_path, tiny_base, capsys, no_model_loading):
    folder, marker = _remote_code_model(tmp_path, tiny_base)
    edits = {"model_name_or_path": str(folder), "trust_remote_code": "true"}
    code, out, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, edits))
    assert not marker.exists()
    assert code == 3, (code, out, err)  # passed, but the structure could not be checked without running the code
    said = out + err
    assert "remote code" in said and "configuration_evil.py" in said and str(folder) in said


def test_dry_run_never_runs_an_lm_eval_task_function(tmp_path, tiny_base, capsys, no_model_loading):
    tasks = tmp_path / "lm_tasks"
    tasks.mkdir()
    marker = tmp_path / "TASK_FUNCTION_RAN"
    (tasks / "my_utils.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n\n"
        f"def process_docs(ds):\n    Path({str(marker)!r}).write_text('ran')\n    return ds\n")
    (tmp_path / "docs.jsonl").write_text('{"q": "1+1?", "a": "2"}\n')
    (tasks / "evil.yaml").write_text(
        "task: evil_task\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {tmp_path / 'docs.jsonl'}}}}}\ntest_split: test\n"
        "process_docs: !function my_utils.process_docs\noutput_type: generate_until\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\nmetric_list: [{metric: exact_match}]\n")
    edits = {"evaluation": f"{{max_samples: 4, batch_size: 4, max_new_tokens: 4, lm_eval_tasks: [evil_task], "
                           f"lm_eval_include_path: {tasks}}}"}
    code, out, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, edits))
    assert not marker.exists()
    assert code == 3, (code, out, err)
    assert "my_utils.process_docs" in out + err


# ------------------------------------------------------------------------------ --dry-run finds what a run refuses
def test_dry_run_refuses_what_a_real_run_would(tmp_path, tiny_base, capsys, no_model_loading):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, {"model_name_or_path": str(broken)}))
    refused(code, err, ["model_name_or_path", "broken-model"])
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, {"max_length": "4"}))
    refused(code, err, ["max_length", "4"])


def test_dry_run_names_data_it_could_not_check(tmp_path, tiny_base, capsys, no_model_loading):
    text = tiny_recipe_yaml(tiny_base, tmp_path / "out")
    text = text.replace("{name: last, source: builtin, max_train: 16, max_eval: 4}",
                        "{name: last, source: superni, path: task999_absent.json}")
    code, out, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, raw=text), "--data_dir", tmp_path / "nowhere")
    assert code in (2, 3), (code, out, err)  # a distinct code: never "OK" (0)
    assert "task999_absent.json" in out + err


