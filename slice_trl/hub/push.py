"""Publishing a run: one commit per finished stage, a final commit with GP/IP, no empty commits.

Each stage's commit holds its folder (converted adapter + the stage's record) and the refreshed
run-level files (the run's facts, the recipe, the results, the heatmap, ``base/``, the card; names:
`slice_trl.utils.run_folder`). Deciding what
changed is huggingface_hub's job: ``create_commit`` leaves out every file whose content the Hub
already has and makes no commit at all when nothing is left; it then returns the current head,
which is how a push is known to be "up to date". `RunFolder.pushed` in the run folder records what
was pushed (commit and sha256 of each file) so that a stage pushed earlier is reported as such,
not as pending, when the Hub cannot be reached.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from slice_trl.utils.jsonio import read_json, write_json_atomic
from slice_trl.utils.run_folder import RunFolder, StageFolder, published_stages
from slice_trl.hub.card import render_model_card
from slice_trl.hub.files import base_model, public_run, read_run, run_files, stage_files
from slice_trl.hub.redaction import describe, known_secrets
from slice_trl.hub.splits import pending_splits, push_pending_splits

logger = logging.getLogger(__name__)

RUN_FILES = 0  # key of the run-level files in `PushReport.failed`


@dataclass
class PushReport:
    """What `push_pending` did. ``failed`` maps stage number -> reason (0 = the run-level files);
    ``unverified`` lists stages that `RunFolder.pushed` says were pushed, with unchanged files, while
    the Hub could not be reached to confirm it; ``splits`` says what happened to task splits that
    were pending ("" when none were)."""

    repo_id: str
    revision: str = "main"
    pushed: list[int] = field(default_factory=list)
    up_to_date: list[int] = field(default_factory=list)
    unverified: dict[int, str] = field(default_factory=dict)  # stage -> commit recorded in RunFolder.pushed
    failed: dict[int, str] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)
    final: str = ""  # "pushed" / "up to date" for the run-level (GP/IP) commit after the stages
    splits: str = ""
    splits_failed: str = ""

    @property
    def ok(self) -> bool:
        """True when every finished stage (and pending split) is known to be on the Hub."""
        return not self.failed and not self.splits_failed

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        where = f"{self.repo_id}@{self.revision}"
        out = []
        if self.pushed:
            out.append(f"{where}: pushed stage(s) {self.pushed} in {len(self.commits)} commit(s) "
                       f"({', '.join(c[:10] for c in self.commits)})")
        if self.final == "pushed":
            out.append(f"{where}: pushed the final results (GP/IP, card)")
        if self.up_to_date and not self.pushed and not self.failed and self.final != "pushed":
            out.append(f"{where} is up to date (stage(s) {self.up_to_date} already published; no commit made)")
        elif self.up_to_date:
            out.append(f"{where}: stage(s) {self.up_to_date} up to date")
        for number, commit in sorted(self.unverified.items()):
            out.append(f"{where}: stage {number} was pushed earlier (commit {commit[:10]}, per {RunFolder.PUSHED}); "
                       "the Hub could not be reached to confirm it")
        for number, reason in sorted(self.failed.items()):
            what = "run files" if number == RUN_FILES else f"stage {number}"
            out.append(f"{where}: {what} NOT pushed: {reason}")
        if self.splits:
            out.append(f"task splits: {self.splits}")
        if self.splits_failed:
            out.append(f"task splits NOT pushed: {self.splits_failed}")
        if not out:
            out.append(f"{where}: no finished stage to push")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


class _NoEmptyCommitWarning(logging.Filter):
    """huggingface_hub warns "No files have been modified since last commit" when it skips an
    empty commit: for us that is the normal "up to date" answer, reported by `PushReport`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No files have been modified" not in record.getMessage()


@contextlib.contextmanager
def quiet_hub():
    """While publishing after each stage: no per-file progress bars (adapters are small, and a
    training log should hold one line per push) and no empty-commit warning."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hub_logger, quiet = logging.getLogger("huggingface_hub.hf_api"), _NoEmptyCommitWarning()
    bars_were_off = are_progress_bars_disabled()
    hub_logger.addFilter(quiet)
    disable_progress_bars()
    try:
        yield
    finally:
        hub_logger.removeFilter(quiet)
        if not bars_were_off:
            enable_progress_bars()


def _api(token):
    from huggingface_hub import HfApi

    return HfApi(token=token, library_name="slice-trl")


def _ensure_repo(api, repo_id: str, private: bool, revision: str) -> str:
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = getattr(url, "repo_id", None) or repo_id
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return repo_id


def _operations(files: dict[str, bytes | Path]) -> list:
    from huggingface_hub import CommitOperationAdd

    return [CommitOperationAdd(path_in_repo=path, path_or_fileobj=src if isinstance(src, bytes) else str(src))
            for path, src in files.items()]


def _sha256s(operations) -> dict[str, str]:
    """sha256 of each operation's content, as huggingface_hub computed it for the upload."""
    return {op.path_in_repo: op.upload_info.sha256.hex() for op in operations}


# ----------------------------------------------------------------------------- RunFolder.pushed
def _read_marker(folder: RunFolder) -> dict:
    try:
        return read_json(folder.pushed)
    except (OSError, ValueError):
        return {}


def _update_marker(folder: RunFolder, repo_id: str, revision: str, head: str, stage: StageFolder | None,
                   operations) -> None:
    """Record in `RunFolder.pushed` what is on the Hub (informative: the Hub listing decides)."""
    try:
        data = _read_marker(folder)
        entry = data.setdefault(f"{repo_id}@{revision}", {"repo_id": repo_id, "revision": revision, "stages": {}})
        entry["head"] = head
        if stage is not None:
            prefix = stage.hub_folder + "/"
            entry["stages"][str(stage.number)] = {
                "task": stage.task, "folder": stage.hub_folder, "commit": head,
                "files": {p: h for p, h in _sha256s(operations).items() if p.startswith(prefix)},
            }
        write_json_atomic(folder.pushed, data)
    except Exception as err:  # the marker is a convenience: never fail a push for it
        logger.warning("Could not update %s: %s", folder.pushed, type(err).__name__)


def _pushed_earlier(folder: RunFolder, repo_id: str, revision: str, stage: StageFolder,
                    secrets: list[str]) -> str | None:
    """The commit `RunFolder.pushed` records for ``stage`` when its files are unchanged since, else None."""
    entry = _read_marker(folder).get(f"{repo_id}@{revision}", {}).get("stages", {}).get(str(stage.number))
    if not entry:
        return None
    try:
        base = base_model(read_run(folder))
        now = _sha256s(_operations(stage_files(stage, secrets, base)))
    except Exception:
        return None
    return entry.get("commit") if now == entry.get("files") else None


# ----------------------------------------------------------------------------- commits
def _message(run: dict, results: dict | None, stage: StageFolder | None, update: bool) -> str:
    if stage is not None:
        total = len(run.get("task_names") or [])
        return f"Stage {stage.number}{f'/{total}' if total else ''}: {stage.task}" + (" (updated)" if update else "")
    general = results.get("general") if results is not None else None
    return "Final results: GP/IP and model card" if general else "Update run results and model card"


def _commit(api, folder: RunFolder, repo_id: str, revision: str, stage: StageFolder | None, secrets: list[str], *,
            token, dataset_repo_id: str | None, template_path, license: str | None, attempts: int = 3):
    """One commit: ``stage``'s folder with the refreshed run-level files when the stage is new on
    the Hub; the stage's folder alone when it is there already (so re-checking an old stage never
    commits run files under its name); the run-level files alone for ``stage=None``.

    Returns ``(CommitInfo, pushed)``; ``pushed`` is False when huggingface_hub found nothing
    changed and made no commit. Retries when someone committed in between (412). Reads the run's
    facts and results once."""
    from huggingface_hub.errors import HfHubHTTPError

    raw_run, results = read_run(folder), folder.read_results()
    run, base = public_run(raw_run, secrets), base_model(raw_run)
    stage_ops = _operations(stage_files(stage, secrets, base)) if stage is not None else []
    if dataset_repo_id and pending_splits(folder.root) is not None:
        dataset_repo_id = None  # the card names the dataset only once its splits are there
    for attempt in range(attempts):
        info = api.repo_info(repo_id, revision=revision)
        published = published_stages(s.rfilename for s in info.siblings or [])
        update = stage is not None and published.get(stage.number) == stage.hub_folder
        operations = list(stage_ops)
        if not update:
            if stage is not None:
                published[stage.number] = stage.hub_folder
            card = render_model_card(folder.root, repo_id, published, dataset_repo_id=dataset_repo_id, token=token,
                                     template_path=template_path, license=license, run=raw_run, results=results)
            operations += _operations(run_files(folder, run, results, secrets, str(card)))
        message = _message(run, results, stage, update)
        try:
            with quiet_hub():
                commit = api.create_commit(repo_id, operations=operations, commit_message=message, revision=revision,
                                           parent_commit=info.sha)
        except HfHubHTTPError as err:
            status = getattr(getattr(err, "response", None), "status_code", None)
            if status == 412 and attempt + 1 < attempts:
                logger.info("%s@%s moved while publishing; retrying on the new head.", repo_id, revision)
                continue
            raise
        pushed = commit.oid != info.sha  # huggingface_hub returns the unchanged head when it skipped
        if pushed:
            logger.info("Published %s to %s@%s (commit %s).", message, repo_id, revision, commit.oid[:10])
        else:
            logger.info("%s@%s already has %s: no commit.", repo_id, revision,
                        stage.hub_folder if stage else "the run files")
        _update_marker(folder, repo_id, revision, commit.oid, stage, operations)
        return commit, pushed
    raise AssertionError("unreachable")  # pragma: no cover  (the loop returns or raises)


def push_stage(
    output_dir: str | os.PathLike,
    stage: int,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    revision: str = "main",
    *,
    dataset_repo_id: str | None = None,
    template_path: str | os.PathLike | None = None,
    license: str | None = None,
):
    """Publish finished stage ``stage`` (1-indexed) of the run in ``output_dir`` to the model repo
    ``repo_id`` in ONE commit: ``stage-NN-<task>/`` (the adapter for the original base + the stage's
    record) and the run-level files. Creates the repo (``exist_ok``) and, for
    ``revision != "main"``, the branch. Returns the `huggingface_hub.CommitInfo`, or None when
    nothing differed (no commit made). Raises on errors (see `push_pending` for the safe variant)."""
    folder = RunFolder(output_dir)
    stages = {s.number: s for s in folder.finished_stages()}
    if int(stage) not in stages:
        raise ValueError(f"Stage {stage} of {output_dir} is not finished (no {folder.STAGES}/{int(stage):02d}-*/"
                         f"{StageFolder.RECORD}); finished: {sorted(stages)}.")
    api = _api(token)
    repo_id = _ensure_repo(api, repo_id, private, revision)
    commit, pushed = _commit(api, folder, repo_id, revision, stages[int(stage)], known_secrets(token), token=token,
                             dataset_repo_id=dataset_repo_id, template_path=template_path, license=license)
    return commit if pushed else None


def push_pending(
    output_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    revision: str = "main",
    *,
    dataset_repo_id: str | None = None,
    stop_on_error: bool = True,
    template_path: str | os.PathLike | None = None,
    license: str | None = None,
) -> PushReport:
    """Publish the run in ``output_dir``: task splits left pending by a failed push (when
    ``dataset_repo_id`` is given), then every finished stage in order, one commit per stage that
    is not on the Hub yet, then the run-level files when they changed since (the final commit
    with GP/IP). Safe to call after every stage and at any time: pushing twice makes no commit.
    NEVER raises: errors are logged as warnings, without the token, and returned in the
    `PushReport`. Never modifies the run's files (it adds a missing ``adapter_original_base/`` and
    updates `RunFolder.pushed`). With ``stop_on_error`` the stages after a failed one are not tried."""
    folder = RunFolder(output_dir)
    report = PushReport(repo_id=repo_id, revision=revision)
    secrets = known_secrets(token)
    if dataset_repo_id and pending_splits(output_dir) is not None:
        try:
            report.splits = f"pushed to {push_pending_splits(output_dir, dataset_repo_id, private, token)}"
        except Exception as err:
            report.splits_failed = (f"{describe(err, secrets)}; they stay in {pending_splits(output_dir)} and the next "
                                    "push retries them")
            logger.warning("Could not push the pending task splits to %s: %s.", dataset_repo_id, report.splits_failed)
    stages: list[StageFolder] = []
    try:
        stages = folder.finished_stages()
        if not stages:
            return report
        api = _api(token)
        report.repo_id = repo_id = _ensure_repo(api, repo_id, private, revision)
    except Exception as err:
        reason = describe(err, secrets)
        for stage in stages:
            commit = _pushed_earlier(folder, repo_id, revision, stage, secrets)
            if commit:
                report.unverified[stage.number] = commit
            else:
                report.failed[stage.number] = reason
        report.failed[RUN_FILES] = reason
        pending = [n for n in report.failed if n != RUN_FILES]
        logger.warning("Could not publish %s to %s: %s. Nothing is lost: %s stay on disk and the next push "
                       "retries.", output_dir, repo_id, reason,
                       f"stage(s) {pending}" if pending else "the run files")
        return report

    kwargs = dict(token=token, dataset_repo_id=dataset_repo_id, template_path=template_path, license=license)
    for index, stage in enumerate(stages):
        try:
            commit, pushed = _commit(api, folder, repo_id, revision, stage, secrets, **kwargs)
            if pushed:
                report.pushed.append(stage.number)
                report.commits.append(commit.oid)
            else:
                report.up_to_date.append(stage.number)
        except Exception as err:
            reason = describe(err, secrets)
            report.failed[stage.number] = reason
            logger.warning("Publishing stage %d (%s) to %s failed: %s. It stays pending; the next push retries it.",
                           stage.number, stage.task, repo_id, reason)
            if stop_on_error:
                for later in stages[index + 1:]:
                    report.failed[later.number] = f"not attempted: stage {stage.number} failed"
                return report
    if not report.failed:
        try:  # results / card may have changed after the last stage (GP/IP of the final evaluation)
            commit, pushed = _commit(api, folder, repo_id, revision, None, secrets, **kwargs)
            report.final = "pushed" if pushed else "up to date"
            if pushed:
                report.commits.append(commit.oid)
        except Exception as err:
            reason = describe(err, secrets)
            report.failed[RUN_FILES] = reason
            logger.warning("Refreshing the run files of %s failed: %s.", repo_id, reason)
    return report


_BACKGROUND_API = None


def push_pending_in_background(output_dir: str | os.PathLike, repo_id: str, **kwargs):
    """`push_pending` on huggingface_hub's own worker thread (``HfApi.run_as_future``: one thread,
    so pushes run one after another, in call order); returns a Future of its `PushReport`.
    Training goes on while the network is slow or down."""
    global _BACKGROUND_API
    if _BACKGROUND_API is None:
        _BACKGROUND_API = _api(None)
    return _BACKGROUND_API.run_as_future(push_pending, output_dir, repo_id, **kwargs)
