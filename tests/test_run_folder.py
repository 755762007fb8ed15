"""The run folder's names are the on-disk and Hub format (written out here as literals: the
independent fact), a finished stage is one with its record, and the Hub listing is parsed back."""

from __future__ import annotations

import json

import pytest

from slice_trl.utils.run_folder import RunFolder, published_stages


def test_every_file_has_its_documented_place(tmp_path):
    run = RunFolder(tmp_path)
    assert run.run_file == tmp_path / "run.json" and run.results_file == tmp_path / "results.json"
    assert run.heatmap == tmp_path / "results_heatmap.png" and run.pushed == tmp_path / "pushed.json"
    assert run.base_record == tmp_path / "base" / "record.json"
    assert run.base_general == tmp_path / "base" / "general.json"
    assert run.pending_splits == tmp_path / "hub_pending" / "task_splits"
    stage = run.stage(0, "task 088/ä")  # 0-indexed in code, 1-indexed on disk; a safe folder name
    assert stage.path == tmp_path / "stages" / "01-task_088" and stage.number == 1
    assert (stage.init, stage.raw, stage.converted, stage.record) == (
        stage.path / "init_adapter", stage.path / "adapter", stage.path / "adapter_original_base",
        stage.path / "record.json")
    assert stage.hub_folder == "stage-01-task_088" and stage.hub_path("record.json") == "stage-01-task_088/record.json"
    assert run.hub_path(run.base_record) == "base/record.json" and run.hub_path(run.results_file) == "results.json"


def test_a_stage_is_finished_iff_its_record_exists(tmp_path):
    run = RunFolder(tmp_path)
    assert run.finished_stages() == [] and run.read_run() is None and run.read_results() is None
    for t, name in enumerate(["b", "a", "c"]):
        run.stage(t, name).path.mkdir(parents=True)
    run.stage(1, "a").write_record({"stage": 2})
    run.stage(0, "b").write_record({"stage": 1})
    assert [(s.number, s.task) for s in run.finished_stages()] == [(1, "b"), (2, "a")]
    # the record holds the sha256 of every other file of its stage folder (none here), checked on resume
    assert json.loads((tmp_path / "stages" / "02-a" / "record.json").read_text()) == {"stage": 2, "files_sha256": {}}
    assert run.stage_records() == [tmp_path / "stages" / "01-b" / "record.json",
                                   tmp_path / "stages" / "02-a" / "record.json"]
    run.stage(1, "other").write_record({})  # two finished folders for stage 2: the stale one is named
    with pytest.raises(ValueError, match="02-a.*02-other|02-other.*02-a"):
        run.finished_stages()


def test_run_facts_and_results_round_trip(tmp_path):
    run = RunFolder(tmp_path)
    run.write_run({"base_model": "m", "task_names": ["é"]})
    run.write_results({"R": [[0.5]]})
    assert json.loads((tmp_path / "run.json").read_text(encoding="utf-8")) == {"base_model": "m", "task_names": ["é"]}
    assert run.read_run()["task_names"] == ["é"] and run.read_results() == {"R": [[0.5]]}


def test_published_stage_folders_are_read_from_a_repo_listing():
    listing = ["README.md", "run.json", "stage-02-b/adapter_config.json", "stage-01-a/adapter_config.json",
               "stage-01-a/record.json", "stage-03-c/record.json", "stage-x-d/adapter_config.json"]
    assert published_stages(listing) == {1: "stage-01-a", 2: "stage-02-b"}  # only folders holding an adapter
    assert RunFolder.hub_record("stage-01-a") == "stage-01-a/record.json"
