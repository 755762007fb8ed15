"""End-to-end checks of the loopback Hub (tests/hub_server.py) with the real clients:
huggingface_hub, datasets. Each test uses its own repositories on the session's server."""

from __future__ import annotations

import hashlib
import io
import json
import re

import conftest_hub  # noqa: F401  (starts the server and sets HF_ENDPOINT before the imports below)
from conftest_hub import TEST_HUB_TOKEN, hub, hub_repo_name  # noqa: F401  (fixtures)

import pytest
import torch
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    get_session,
    hf_hub_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file, save_file


def test_clients_point_at_the_test_hub(hub):
    assert constants.ENDPOINT == hub.url
    assert constants.HF_HUB_DISABLE_XET
    import datasets

    assert datasets.config.HF_ENDPOINT == hub.url


def test_create_repo_namespaces_private_and_errors(hub, hub_repo_name):
    api = HfApi()
    assert api.whoami()["name"] == hub.user
    url = api.create_repo(hub_repo_name)  # no namespace: the token's user
    assert url.repo_id == f"{hub.user}/{hub_repo_name}"

    org_repo = f"{hub.orgs[0]}/{hub_repo_name}"
    api.create_repo(org_repo, private=True)
    assert api.model_info(org_repo).private is True
    assert hub.is_private(org_repo)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(org_repo)
    assert err.value.response.status_code == 409
    api.create_repo(org_repo, exist_ok=True)  # the client turns the 409 into success
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(f"someone-else/{hub_repo_name}")
    assert err.value.response.status_code == 403

    with pytest.raises(RepositoryNotFoundError):  # private: anonymous gets RepoNotFound
        HfApi(token=False).model_info(org_repo)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{hub.user}/does-not-exist")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(org_repo, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        api.hf_hub_download(org_repo, "missing.txt")
    assert not api.repo_exists(f"{hub.user}/does-not-exist")
    assert api.file_exists(org_repo, ".gitattributes")


def test_upload_folder_list_download_and_history(hub, hub_repo_name, tmp_path):
    api = HfApi()
    repo = f"{hub.user}/{hub_repo_name}"
    api.create_repo(repo)
    src = tmp_path / "src"
    (src / "weights").mkdir(parents=True)
    (src / "notes.txt").write_text("hello hub\n")
    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    save_file(tensors, src / "weights" / "model.safetensors")
    first = api.upload_folder(folder_path=src, repo_id=repo, commit_message="first upload")
    assert re.fullmatch(r"[0-9a-f]{40}", first.oid)

    assert sorted(api.list_repo_files(repo)) == [".gitattributes", "notes.txt", "weights/model.safetensors"]
    tree = {e.path: e for e in api.list_repo_tree(repo, recursive=True)}
    st = tree["weights/model.safetensors"]
    assert st.lfs is not None and st.lfs.sha256 == hashlib.sha256(
        (src / "weights" / "model.safetensors").read_bytes()).hexdigest()
    assert tree["notes.txt"].lfs is None
    info = api.model_info(repo, files_metadata=True)
    assert info.sha == first.oid
    assert {s.rfilename for s in info.siblings} == set(hub.list_files(repo))

    path = hf_hub_download(repo, "weights/model.safetensors", cache_dir=tmp_path / "cache")
    assert torch.equal(load_file(path)["w"], tensors["w"])
    text = hf_hub_download(repo, "notes.txt", cache_dir=tmp_path / "cache")
    assert open(text).read() == "hello hub\n"

    # identical content: no new commit; a change: a new commit whose parent is the previous head
    again = api.upload_folder(folder_path=src, repo_id=repo, commit_message="same again")
    assert again.oid == first.oid
    (src / "notes.txt").write_text("changed\n")
    second = api.upload_folder(folder_path=src, repo_id=repo, commit_message="second")
    commits = api.list_repo_commits(repo)
    assert [c.commit_id for c in commits][:2] == [second.oid, first.oid]
    assert [c.title for c in commits] == ["second", "first upload", "initial commit"]
    assert second.oid == hub.commit_ids(repo)[0]

    # an outdated parent_commit is refused with 412
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo, parent_commit=first.oid)
    assert err.value.response.status_code == 412
    # old revisions stay readable by commit id
    old = hf_hub_download(repo, "notes.txt", revision=first.oid, cache_dir=tmp_path / "cache")
    assert open(old).read() == "hello hub\n"

    # deletions (deletedFile / deletedFolder lines)
    api.upload_file(path_or_fileobj=b"tmp", path_in_repo="tmp/a.txt", repo_id=repo)
    api.delete_folder("tmp", repo_id=repo)
    api.upload_file(path_or_fileobj=b"tmp", path_in_repo="gone.txt", repo_id=repo)
    api.delete_file("gone.txt", repo_id=repo)
    with pytest.raises(EntryNotFoundError):
        api.delete_file("gone.txt", repo_id=repo)
    assert sorted(hub.list_files(repo)) == [".gitattributes", "notes.txt", "weights/model.safetensors"]
    second = api.model_info(repo)

    # paths-info and Range requests
    infos = {p.path: p for p in api.get_paths_info(repo, ["notes.txt", "weights", "nope"])}
    assert set(infos) == {"notes.txt", "weights"}
    url = f"{hub.url}/{repo}/resolve/main/notes.txt"
    r = get_session().get(url, headers={"Range": "bytes=2-4"})
    assert r.status_code == 206 and r.content == b"ang" and r.headers["X-Repo-Commit"] == second.sha
    head = get_session().head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len("changed\n"))


def test_lfs_upload_with_chunked_encoding(hub, hub_repo_name):
    """A PUT without Content-Length (chunked transfer encoding) is reassembled and verified."""
    api = HfApi()
    repo = f"{hub.user}/{hub_repo_name}"
    api.create_repo(repo)
    data = bytes(range(256)) * 40
    oid = hashlib.sha256(data).hexdigest()
    headers = {"Authorization": f"Bearer {TEST_HUB_TOKEN}"}
    batch = get_session().post(
        f"{hub.url}/{repo}.git/info/lfs/objects/batch",
        json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]},
        headers=headers,
    ).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]
    put = get_session().put(href, content=iter([data[:1000], data[1000:]]))  # generator => chunked
    assert put.status_code == 200
    assert hub.requests_matching("PUT")[-1].headers.get("Transfer-Encoding") == "chunked"
    api.create_commit(repo, [CommitOperationAdd("blob.bin", data)], commit_message="lfs")
    assert hub.read_file(repo, "blob.bin") == data


def test_dataset_push_and_load_round_trip(hub, hub_repo_name, tmp_path):
    from datasets import Dataset, DatasetDict, load_dataset

    repo = f"{hub.orgs[0]}/{hub_repo_name}"
    dd = DatasetDict(
        {
            "train": Dataset.from_dict({"prompt": ["p1", "p2", "p3"], "completion": ["c1", "c2", "c3"]}),
            "eval": Dataset.from_dict({"prompt": ["q1"], "completion": ["d1"]}),
        }
    )
    dd.push_to_hub(repo, config_name="task_a", private=True)
    dd2 = DatasetDict({k: v.map(lambda r: {"completion": r["completion"].upper()}) for k, v in dd.items()})
    dd2.push_to_hub(repo, config_name="task_b")
    files = hub.list_files(repo, repo_type="dataset")
    assert any(f.startswith("task_a/train-") and f.endswith(".parquet") for f in files)
    assert hub.is_private(repo, repo_type="dataset")

    loaded = load_dataset(repo, "task_b", cache_dir=str(tmp_path / "ds-cache"))
    assert set(loaded) == {"train", "eval"}
    assert loaded["train"]["completion"] == ["C1", "C2", "C3"]
    assert loaded["eval"][0] == {"prompt": "q1", "completion": "D1"}


def test_model_card_push_and_validation(hub, hub_repo_name):
    api = HfApi()
    repo = f"{hub.user}/{hub_repo_name}"
    api.create_repo(repo)
    card = ModelCard.from_template(
        ModelCardData(library_name="peft", tags=["continual-learning"], license="apache-2.0"),
        template_str="---\n{{ card_data }}\n---\n# {{ title }}\n",
        title="Hello",
    )
    card.push_to_hub(repo)
    info = api.model_info(repo)
    assert info.card_data.library_name == "peft" and "continual-learning" in info.tags
    assert ModelCard.load(repo).text.strip() == "# Hello"
    with pytest.raises(ValueError, match="Invalid metadata"):  # the server's validate-yaml says 400
        api.upload_file(path_or_fileobj=b"---\nkey: [unclosed\n---\ntext", path_in_repo="README.md", repo_id=repo)
    assert hub.requests_matching("POST", "/api/validate-yaml")[-1].status == 400


def test_branches_and_refs(hub, hub_repo_name):
    api = HfApi()
    repo = f"{hub.user}/{hub_repo_name}"
    api.create_repo(repo)
    api.create_branch(repo, branch="stage-01")
    api.create_branch(repo, branch="stage-01", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch(repo, branch="stage-01")
    assert err.value.response.status_code == 409
    api.upload_file(path_or_fileobj=b"only on the branch", path_in_repo="b.txt", repo_id=repo, revision="stage-01")
    assert "b.txt" in api.list_repo_files(repo, revision="stage-01")
    assert "b.txt" not in api.list_repo_files(repo)
    refs = api.list_repo_refs(repo)
    assert {b.name for b in refs.branches} == {"main", "stage-01"}
    api.create_tag(repo, tag="v1", revision="stage-01")
    assert api.list_repo_refs(repo).tags[0].target_commit == hub.head(repo, revision="stage-01")
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo, revision="no-branch")


def test_injected_500_clears_and_server_down(hub, hub_repo_name):
    api = HfApi()
    repo = f"{hub.user}/{hub_repo_name}"
    api.create_repo(repo)
    hub.clear_log()
    hub.fail_next(1, status=500, path_contains="/preupload/")
    api.upload_file(path_or_fileobj=b"persistent", path_in_repo="p.txt", repo_id=repo)  # retried once
    statuses = [r.status for r in hub.requests_matching("POST", "/preupload/")]
    assert statuses == [500, 200]
    assert hub.read_file(repo, "p.txt") == b"persistent"

    hub.set_down(True)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(f"{hub.user}/{hub_repo_name}-2")
    assert err.value.response.status_code == 503
    hub.set_down(False)
    api.create_repo(f"{hub.user}/{hub_repo_name}-2")

    hub.fail_next(1, status=500, path_contains="/commit/")  # commits are not retried by the client
    with pytest.raises(HfHubHTTPError):
        api.upload_file(path_or_fileobj=b"lost?", path_in_repo="q.txt", repo_id=repo)
    assert "q.txt" not in hub.list_files(repo)


def test_token_sent_only_in_authorization_header(hub, hub_repo_name):
    api = HfApi()
    repo = f"{hub.user}/{hub_repo_name}"
    hub.clear_log()
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=json.dumps({"a": 1}).encode(), path_in_repo="a.json", repo_id=repo)
    api.upload_file(path_or_fileobj=io.BytesIO(b"\0binary" * 100), path_in_repo="b.bin", repo_id=repo)
    sent = [h for h in hub.authorization_headers() if h is not None]
    assert sent and set(sent) == {f"Bearer {TEST_HUB_TOKEN}"}
    assert hub.find_in_requests(TEST_HUB_TOKEN) == []
    # LFS storage PUTs go without credentials, like a presigned URL
    assert all(r.authorization is None for r in hub.requests_matching("PUT"))
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_wrong_token").create_repo(f"{hub.user}/{hub_repo_name}-x")
    assert err.value.response.status_code == 401


def test_required_token_is_enforced():
    """A separate server that only accepts one token, for every request (validate-yaml excepted)."""
    from hub_server import HubServer

    with HubServer(token="hf_onlyThisTokenWorks123", require_token=True) as srv:
        good = HfApi(endpoint=srv.url, token="hf_onlyThisTokenWorks123")
        good.create_repo("tester/locked")
        assert good.model_info("tester/locked").id == "tester/locked"
        assert get_session().get(f"{srv.url}/api/models/tester/locked").status_code == 401  # anonymous
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(endpoint=srv.url, token="hf_someOtherToken456789").model_info("tester/locked")
        assert err.value.response.status_code == 401
        r = get_session().post(f"{srv.url}/api/validate-yaml", json={"content": "---\na: 1\n---\n"})
        assert r.status_code == 200


def test_strict_mode_answers_only_the_required_fields(hub, hub_repo_name):
    api = HfApi()
    repo = f"{hub.user}/{hub_repo_name}"
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\n---\nhello\n", path_in_repo="README.md", repo_id=repo)
    full = api.model_info(repo, files_metadata=True)
    assert all(s.blob_id for s in full.siblings) and full.card_data is not None

    hub.strict = True
    strict = api.model_info(repo, files_metadata=True)
    assert strict.sha == full.sha and sorted(s.rfilename for s in strict.siblings) == [".gitattributes", "README.md"]
    assert all(s.blob_id is None and s.lfs is None for s in strict.siblings) and strict.card_data is None
    [entry] = api.get_paths_info(repo, ["README.md"], expand=True)
    assert entry.blob_id and entry.last_commit is None  # tree entries keep their oid, not the optional lastCommit
    # create_commit still leaves an unchanged file out (the pre-upload answer keeps the oid of files already there)
    info = api.create_commit(repo, [CommitOperationAdd("README.md", b"---\nlicense: mit\n---\nhello\n")],
                             commit_message="same content")
    assert info.oid == strict.sha
