"""Task loaders: split protocol, prompt formats, length fitting, TaskSpec errors.

Loader tests write small files in the real formats (natural-instructions task JSON, TRACE
directories, jsonl/json/csv/parquet); two tests read the real shared files and skip without them.
Length budgets are checked with `tiny_tokenizer()` (one token per UTF-8 byte, ChatML template),
where a conversation's length is computable by hand:
  "<|im_start|>" + role + "\\n" + content + "<|im_end|>" + "\\n"  =  len(role) + len(content) + 4
so user prompt P + assistant completion C  ->  (4 + 4 + P) + (9 + 4 + C) = 21 + P + C tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from slice_trl.tasks import (
    BUILTIN_TASKS,
    TaskSpec,
    build_task,
    build_tasks,
    builtin_suite,
    load_generic_task,
    load_superni_task,
    load_trace_task,
    sequence_length,
    split_train_eval,
)
from slice_trl.tasks import base as tasks_base
from slice_trl.tasks.base import fit_prompt, shorten_middle, user_prompt_example
from slice_trl.utils.testing import tiny_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def conv_len(prompt: str, completion: str) -> int:
    """Hand count of a user/assistant ChatML conversation under the byte tokenizer."""
    return 21 + len(prompt.encode()) + len(completion.encode())


# ---------------------------------------------------------------------------------------------
# Files in the real formats
# ---------------------------------------------------------------------------------------------

DEFINITION = "Answer with the misspelled word of the sentence."


def write_superni(path: Path, n: int = 12, name: str = "task088_identify_typo_verification", with_empty: bool = True):
    """A natural-instructions task file: metadata keys in a non-canonical order, a NaN URL
    (as in some original files), "Definition" as a one-string list, outputs as lists."""
    instances = [{"id": f"{name}-{i}", "input": f"The karge dog number {i}.", "output": [f"karge{i}", "other"]}
                 for i in range(n)]
    if with_empty:
        instances.append({"id": f"{name}-empty", "input": "No answer here.", "output": []})
    body = {
        "Instances": instances,
        "Contributors": ["someone"],
        "Definition": [DEFINITION],
        "Positive Examples": [{"input": "A typo heer.", "output": "heer", "explanation": "e and r swapped"}],
        "Negative Examples": [],
        "Categories": ["Word Semantics"],
        "Input_language": ["English"],
        "Instance License": ["Unknown"],
    }
    text = json.dumps(body).replace('"Contributors"', '"URL": [NaN], "Contributors"')
    file = path / f"{name}.json"
    file.write_text(text, encoding="utf-8")
    return file


def write_trace(path: Path, n_train: int = 30, n_eval: int = 8) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    train = [{"prompt": f"Stance of text {i}?\nText:\nrates up {i}\nStance:", "answer": "hawkish"} for i in range(n_train)]
    held = [{"prompt": f"Stance of held-out text {i}?\nStance:", "answer": "dovish"} for i in range(n_eval)]
    (path / "train.json").write_text(json.dumps(train))
    (path / "eval.json").write_text(json.dumps(held))
    (path / "test.json").write_text(json.dumps(held))
    return path


# ---------------------------------------------------------------------------------------------
# The paper's split
# ---------------------------------------------------------------------------------------------

def test_split_sizes_seed42_and_reference_permutation():
    ds = Dataset.from_dict({"i": list(range(50))})
    train, ev = split_train_eval(ds, seed=42, max_eval=20)
    assert (len(train), len(ev)) == (30, 20)
    # Independent fact: shuffle(seed) then train_test_split(seed) = two default_rng(seed) permutations.
    p = np.random.default_rng(42).permutation(50)
    assert list(ev["i"]) == [int(p[j]) for j in p[:20]]
    assert list(train["i"]) == [int(p[j]) for j in p[20:]]
    assert not set(list(train["i"])) & set(list(ev["i"]))
    assert sorted(list(train["i"]) + list(ev["i"])) == list(range(50))


def test_split_holds_out_at_most_n_minus_one_and_is_deterministic():
    ds = Dataset.from_dict({"i": list(range(5))})
    train, ev = split_train_eval(ds)  # min(200, 5 - 1) = 4 held out
    assert (len(train), len(ev)) == (1, 4)
    big = Dataset.from_dict({"i": list(range(300))})
    a, b = split_train_eval(big), split_train_eval(big)
    assert (len(a[1]), len(a[0])) == (200, 100)
    assert list(a[1]["i"]) == list(b[1]["i"]) and list(a[0]["i"]) == list(b[0]["i"])
    assert list(split_train_eval(big, seed=1)[1]["i"]) != list(a[1]["i"])


@pytest.mark.parametrize("n,max_eval,match", [(1, 200, "at least 2"), (0, 200, "at least 2"), (10, 0, "max_eval")])
def test_split_errors(n, max_eval, match):
    with pytest.raises(ValueError, match=match):
        split_train_eval(Dataset.from_dict({"i": list(range(n))}), max_eval=max_eval)


# ---------------------------------------------------------------------------------------------
# Super-NI
# ---------------------------------------------------------------------------------------------

def test_superni_prompt_format_metric_and_split(tmp_path):
    file = write_superni(tmp_path, n=12)
    task = load_superni_task(file, max_eval=4)
    assert task.name == "task088_identify_typo_verification"
    assert task.metric == "exact_match"  # docs/method.md: task088 is scored by exact match
    assert (len(task.train), len(task.eval)) == (8, 4)  # 12 usable instances, the empty one skipped
    assert task.info["skipped_no_output"] == 1
    seen = set()
    for ex in list(task.train) + list(task.eval):
        assert [m["role"] for m in ex["prompt"]] == ["user"]
        assert [m["role"] for m in ex["completion"]] == ["assistant"]
        content = ex["prompt"][0]["content"]
        i = int(content.rsplit(" ", 1)[1].rstrip("."))
        assert content == f"{DEFINITION}\n\nInput: The karge dog number {i}."
        assert ex["completion"][0]["content"] == f"karge{i}"  # the FIRST output
        seen.add(i)
    assert seen == set(range(12))


def test_superni_metric_defaults_and_override(tmp_path):
    gen = write_superni(tmp_path, name="task181_outcome_extraction", with_empty=False)
    assert load_superni_task(gen, max_eval=2).metric == "rougeL"
    assert load_superni_task(gen, max_eval=2, metric="exact_match").metric == "exact_match"
    for short in ("task1510", "task363"):
        f = write_superni(tmp_path, name=f"{short}_x", with_empty=False)
        assert load_superni_task(f, max_eval=2).metric == "exact_match"


def test_superni_directory_and_short_id(tmp_path):
    write_superni(tmp_path, name="task088_identify_typo_verification")
    write_superni(tmp_path, name="task0880_other")
    task = load_superni_task(tmp_path, "task088", max_eval=3)
    assert task.name == "task088_identify_typo_verification"
    assert load_superni_task(tmp_path, "task088_identify_typo_verification", max_eval=3).name == task.name
    with pytest.raises(FileNotFoundError, match="Did you mean"):
        load_superni_task(tmp_path, "task088_identify_typo_verificaton")
    with pytest.raises(ValueError, match="task="):
        load_superni_task(tmp_path)


def test_superni_bad_files(tmp_path):
    bad = tmp_path / "task1_bad.json"
    bad.write_text(json.dumps({"Definition": ["x"]}))
    with pytest.raises(ValueError, match="'Definition' and 'Instances'"):
        load_superni_task(bad)
    bad.write_text(json.dumps({"Definition": ["x"], "Instances": [{"input": "a"}]}))
    with pytest.raises(ValueError, match="'input' and 'output'"):
        load_superni_task(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_superni_task(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="exactly one of"):
        load_superni_task()


def test_superni_real_file():
    file = SHARED_DATA / "superni" / "task088_identify_typo_verification.json"
    if not file.exists():
        pytest.skip(f"shared data not found at {file}")
    raw = json.loads(file.read_text(encoding="utf-8"))
    task = load_superni_task(file)
    n = len(raw["Instances"])  # 277 in the shared file
    assert (len(task.train), len(task.eval)) == (n - 200, 200)
    assert task.metric == "exact_match"
    definition = raw["Definition"][0]
    answers = {inst["input"]: inst["output"][0] for inst in raw["Instances"]}
    for ex in list(task.eval)[:20]:
        head, inp = ex["prompt"][0]["content"].split("\n\nInput: ", 1)
        assert head == definition and answers[inp] == ex["completion"][0]["content"]


# ---------------------------------------------------------------------------------------------
# TRACE
# ---------------------------------------------------------------------------------------------

def test_trace_splits_train_json_only(tmp_path):
    d = write_trace(tmp_path / "FOMC", n_train=30)
    task = load_trace_task(d, max_eval=10)
    assert task.name == "FOMC" and task.metric == "rougeL"
    assert (len(task.train), len(task.eval)) == (20, 10)
    train_prompts = {r["prompt"] for r in json.loads((d / "train.json").read_text())}
    got = [ex["prompt"][0]["content"] for ex in list(task.train) + list(task.eval)]
    assert set(got) == train_prompts and len(got) == 30  # every train.json record, nothing from eval/test.json
    assert {ex["completion"][0]["content"] for ex in task.train} == {"hawkish"}
    # root + task name resolves the same directory; `files` pools other files on request
    assert load_trace_task(tmp_path, "FOMC", max_eval=10).eval[0] == task.eval[0]
    pooled = load_trace_task(d, files=("train.json", "eval.json"), max_eval=10)
    assert len(pooled.train) + len(pooled.eval) == 38


def test_trace_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_trace_task(tmp_path / "missing")
    write_trace(tmp_path / "FOMC")
    with pytest.raises(FileNotFoundError, match="FOMC"):  # lists the task folders it found
        load_trace_task(tmp_path, "FOMX")
    with pytest.raises(FileNotFoundError, match="dev.json"):
        load_trace_task(tmp_path / "FOMC", files=("dev.json",))
    bad = tmp_path / "Bad"
    bad.mkdir()
    (bad / "train.json").write_text(json.dumps([{"question": "q", "label": "a"}]))
    with pytest.raises(ValueError, match="prompt"):
        load_trace_task(bad)


def test_trace_real_fomc():
    d = SHARED_DATA / "trace" / "FOMC"
    if not d.exists():
        pytest.skip(f"shared data not found at {d}")
    n = len(json.loads((d / "train.json").read_text()))
    task = load_trace_task(d, max_train=50)
    assert len(task.eval) == 200 and len(task.train) == 50 and task.info["n_records"] == n
    for ex in task.eval.select(range(10)):
        assert ex["completion"][0]["content"] in {"dovish", "hawkish", "neutral"}
        assert ex["prompt"][0]["content"].startswith("What is the monetary policy stance")


# ---------------------------------------------------------------------------------------------
# Generic
# ---------------------------------------------------------------------------------------------

def test_generic_field_mapping_jsonl(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text("\n".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}", "sys": "Be brief."}) for i in range(10)))
    task = load_generic_task("qa", f, fields={"prompt": "question", "completion": "answer", "system": "sys"}, max_eval=3)
    assert (len(task.train), len(task.eval), task.metric) == (7, 3, "rougeL")
    ex = task.train[0]
    i = ex["prompt"][1]["content"][1:-1]
    assert ex["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}?"}]
    assert ex["completion"] == [{"role": "assistant", "content": f"a{i}"}]


def test_generic_messages_last_assistant_turn(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "sum?"}, {"role": "assistant", "content": str(i)}]}
            for i in range(6)]
    rows.append({"messages": [{"role": "user", "content": "no reply"}]})  # no assistant turn: skipped
    (tmp_path / "chat.json").write_text(json.dumps(rows))
    task = load_generic_task("chat", tmp_path / "chat.json", max_eval=2)  # auto-detects "messages"
    assert task.info["skipped_no_completion"] == 1 and len(task.train) == 4
    for ex in list(task.train) + list(task.eval):
        i = ex["prompt"][0]["content"].split()[1]
        assert [m["role"] for m in ex["prompt"]] == ["user", "assistant", "user"]
        assert ex["completion"] == [{"role": "assistant", "content": i}]
    sharegpt = [{"conversations": [{"from": "human", "value": f"x{i}"}, {"from": "gpt", "value": f"y{i}"}]} for i in range(4)]
    (tmp_path / "sg.json").write_text(json.dumps(sharegpt))
    ex = load_generic_task("sg", tmp_path / "sg.json", max_eval=1).eval[0]
    assert ex["prompt"][0]["role"] == "user" and ex["completion"][0]["content"] == "y" + ex["prompt"][0]["content"][1:]


def test_generic_csv_and_parquet(tmp_path):
    ds = Dataset.from_dict({"q": [f"q{i}" for i in range(8)], "a": [f"a{i}" for i in range(8)]})
    ds.to_csv(str(tmp_path / "d.csv"))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    for name in ("d.csv", "d.parquet"):
        task = load_generic_task("t", tmp_path / name, fields={"prompt": "q", "completion": "a"}, max_eval=2)
        ex = task.eval[0]
        assert ex["completion"][0]["content"] == "a" + ex["prompt"][0]["content"][1:]
        assert len(task.train) == 6


def test_generic_glob_and_conversational_columns(tmp_path):
    for part in range(2):
        rows = [{"prompt": [{"role": "user", "content": f"p{part}{i}"}],
                 "completion": [{"role": "assistant", "content": f"c{part}{i}"}]} for i in range(3)]
        (tmp_path / f"part{part}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = TaskSpec(source="generic", path=str(tmp_path / "part*.jsonl"), name="conv", max_eval=2)
    task = build_task(spec)
    assert len(task.train) + len(task.eval) == 6  # both files, TRL conversational columns used as they are
    for ex in list(task.train) + list(task.eval):
        assert ex["completion"][0]["content"] == "c" + ex["prompt"][0]["content"][1:]


def test_generic_errors(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"question": "q", "answer": "a"}) for _ in range(3)))
    with pytest.raises(ValueError, match="Did you mean 'answer'"):
        load_generic_task("t", f, fields={"prompt": "question", "completion": "answr"})
    with pytest.raises(ValueError, match="Did you mean 'completion'"):
        load_generic_task("t", f, fields={"prompt": "question", "complection": "answer"})
    with pytest.raises(ValueError, match="give fields="):
        load_generic_task("t", f)
    with pytest.raises(ValueError, match="not both"):
        load_generic_task("t", f, fields={"messages": "m", "prompt": "question", "completion": "answer"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_generic_task("t", tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="Unsupported"):
        load_generic_task("t", tmp_path / "d.txt")


# ---------------------------------------------------------------------------------------------
# Length budget (byte tokenizer: lengths by hand)
# ---------------------------------------------------------------------------------------------

def test_sequence_length_by_hand(tok):
    ex = user_prompt_example("abcdef", "xyz")
    assert sequence_length(ex, tok) == conv_len("abcdef", "xyz") == 30
    # String records: TRL appends the EOS token (one token here) to the completion.
    assert sequence_length({"prompt": "abcdef", "completion": "xyz"}, tok) == 6 + 3 + 1
    assert sequence_length(user_prompt_example("é", "x"), tok) == conv_len("é", "x") == 24  # 2 bytes


def test_fit_input_first_keeps_definition_and_completion(tmp_path, tok):
    definition = "D" * 20
    inp = "head-" + "m" * 90 + "-tail"  # 100 bytes
    name = "task999_fit"
    body = {"Definition": [definition], "Instances": [{"input": inp, "output": ["yes!!"]}] * 3}
    (tmp_path / f"{name}.json").write_text(json.dumps(body))
    full = conv_len(definition + "\n\nInput: " + inp, "yes!!")
    assert full == 155
    task = load_superni_task(tmp_path / f"{name}.json", max_eval=1, tokenizer=tok, max_length=120)
    for ex in list(task.train) + list(task.eval):
        content = ex["prompt"][0]["content"]
        assert sequence_length(ex, tok) <= 120
        assert content.startswith(definition + "\n\nInput: head-") and content.endswith("-tail")
        assert " ... " in content and ex["completion"][0]["content"] == "yes!!"
    assert task.info["length_fit"] == {
        "max_length": 120,
        "train": {"examples": 2, "shortened": 2, "dropped": 0},
        "eval": {"examples": 1, "shortened": 1, "dropped": 0},
    }
    # A budget that fits is a no-op.
    same = load_superni_task(tmp_path / f"{name}.json", max_eval=1, tokenizer=tok, max_length=full)
    assert same.eval[0]["prompt"][0]["content"] == definition + "\n\nInput: " + inp
    assert same.info["length_fit"]["eval"]["shortened"] == 0


def test_fit_then_definition_and_drop(tok):
    definition, inp, out = "d" * 200, "i" * 100, "yes"

    def render(pieces):
        return user_prompt_example(f"{pieces[1]}\n\nInput: {pieces[0]}", out)

    ex, shortened = fit_prompt([inp, definition], render, tok, max_length=150, min_keep_tokens=32)
    assert shortened and sequence_length(ex, tok) <= 150
    content = ex["prompt"][0]["content"]
    d_part, i_part = content.split("\n\nInput: ")
    # The input went down to its 32-token floor first (16 head + 16 tail bytes), then the definition.
    assert i_part == "i" * 16 + " ... " + "i" * 16
    assert len(d_part) < 200 and " ... " in d_part and ex["completion"][0]["content"] == out
    # Budget 30 = template (21) + "\n\nInput: " (9) -> both pieces go, the completion "yes" does not fit.
    assert fit_prompt([inp, definition], render, tok, max_length=32)[0] is None
    ex, _ = fit_prompt([inp, definition], render, tok, max_length=33)  # 21 + 9 + 3: empty pieces fit
    assert ex is not None and sequence_length(ex, tok) == 33


def test_fit_drop_counted_and_multibyte_cut(tmp_path, tok):
    rows = [{"question": "q" * 10, "answer": "a" * (60 if i < 2 else 3)} for i in range(6)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    task = load_generic_task("t", tmp_path / "d.json", fields={"prompt": "question", "completion": "answer"},
                             max_eval=2, tokenizer=tok, max_length=40)
    stats = task.info["length_fit"]
    assert stats["train"]["dropped"] + stats["eval"]["dropped"] == 2  # 21 + 60 > 40 whatever the prompt
    assert all(len(ex["completion"][0]["content"]) == 3 for ex in list(task.train) + list(task.eval))
    text = "é" * 50  # 100 bytes; cuts must fall between characters, never inside one
    cut = shorten_middle(text, 21, tok)
    assert "\ufffd" not in cut and cut.replace(" ... ", "") == "é" * len(cut.replace(" ... ", ""))
    with pytest.raises(ValueError, match="both a tokenizer and max_length"):
        load_generic_task("t", tmp_path / "d.json", fields={"prompt": "question", "completion": "answer"},
                          tokenizer=tok)


def test_fit_real_task088_with_byte_tokenizer(tok):
    file = SHARED_DATA / "superni" / "task088_identify_typo_verification.json"
    if not file.exists():
        pytest.skip(f"shared data not found at {file}")
    task = load_superni_task(file, max_eval=40, max_train=40, tokenizer=tok, max_length=256)
    raw = json.loads(file.read_text(encoding="utf-8"))
    answers = {inst["output"][0] for inst in raw["Instances"]}
    # The definition alone is longer than 256 bytes: every example is shortened, none dropped.
    assert len(raw["Definition"][0].encode()) > 256
    assert task.info["length_fit"]["train"] == {"examples": 40, "shortened": 40, "dropped": 0}
    for ex in list(task.train) + list(task.eval):
        assert sequence_length(ex, tok) <= 256 and ex["completion"][0]["content"] in answers


# ---------------------------------------------------------------------------------------------
# Built-in suite
# ---------------------------------------------------------------------------------------------

def test_builtin_deterministic_shared_inputs_conflicting_answers():
    names = list(BUILTIN_TASKS)
    suite = builtin_suite(names, n_train=40, n_eval=10, seed=3)
    again = builtin_suite(names, n_train=40, n_eval=10, seed=3)
    assert len(suite) >= 3 and all(t.metric == "exact_match" for t in suite)
    assert [t.train[:] for t in suite] == [t.train[:] for t in again]
    assert builtin_suite(["first"], 40, 10, seed=4)[0].train[:] != suite[0].train[:]
    for split in ("train", "eval"):
        rows = [list(getattr(t, split)) for t in suite]
        for i in range(len(rows[0])):
            inputs = {r[i]["prompt"][0]["content"].split("\n")[0] for r in rows}
            assert len(inputs) == 1  # every task sees the same word list at position i
            words = inputs.pop().removeprefix("Words: ").split()
            answers = [r[i]["completion"][0]["content"] for r in rows]
            assert answers == [words[0], words[-1], words[1], words[2], " ".join(reversed(words))]
            assert len(set(answers)) == len(answers)  # pairwise conflicting
    train_inputs = {ex["prompt"][0]["content"].split("\n")[0] for ex in suite[0].train}
    assert not train_inputs & {ex["prompt"][0]["content"].split("\n")[0] for ex in suite[0].eval}


def test_builtin_is_short_and_default_sequence(tok):
    suite = builtin_suite(n_train=32, n_eval=8, tokenizer=tok, max_length=128)
    assert [t.name for t in suite] == ["first", "last", "second"]
    longest = max(sequence_length(ex, tok) for t in suite for ex in t.train)
    assert longest <= 21 + 60 + 25  # bytes: "Words: " + 4 words + instruction, and the answer
    with pytest.raises(ValueError, match="Did you mean 'first'"):
        builtin_suite(["frist"])


# ---------------------------------------------------------------------------------------------
# TaskSpec and build_task
# ---------------------------------------------------------------------------------------------

def test_taskspec_errors(tmp_path, tok):
    write_superni(tmp_path)
    trace_dir = write_trace(tmp_path / "FOMC")
    cases = [
        (dict(source="trace", path=str(trace_dir), files=["dev.json"]), "are not in"),
        (dict(source="superni", path=str(tmp_path), task="task088", files=["train.json"]), "only used by source='trace'"),
        (dict(), "source is required"),
        (dict(source="supernI", path=str(tmp_path), task="task088"), "Did you mean 'superni'"),
        (dict(source="superni", path=str(tmp_path / "missing"), task="task088"), "does not exist"),
        (dict(source="superni", path=str(tmp_path), task="task088", metric="rouge"), "Did you mean 'rougeL'"),
        (dict(source="superni", path=str(tmp_path)), "is a directory: set task="),
        (dict(source="superni", path=str(tmp_path), task="task089"), "No Super-NI task file"),
        (dict(source="superni", path=str(tmp_path), dataset_id="x/y", task="task088"), "exactly one of"),
        (dict(source="superni", dataset_id="x/y"), "task= is required"),
        (dict(source="trace", path=str(tmp_path)), "not a TRACE task directory"),
        (dict(source="builtin", task="lst"), "Did you mean 'last'"),
        (dict(source="builtin", task="first", path=str(tmp_path)), "remove path="),
        (dict(source="hub_splits", task="first"), "needs dataset_id="),
        (dict(source="hub_splits", dataset_id="me/splits"), "needs task="),
        (dict(source="superni", path=str(tmp_path), task="task088", fields={"prompt": "q"}), "only used by source='generic'"),
        (dict(source="generic", path=str(tmp_path), fields={"prompt": "q"}), "'prompt' and 'completion'"),
        (dict(source="builtin", task="first", max_eval=0), "max_eval"),
        (dict(source="builtin", task="first", max_train=-1), "max_train"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            TaskSpec(**kwargs)
    with pytest.raises(ValueError, match="Did you mean 'dataset_id'"):
        TaskSpec.from_dict({"source": "hub_splits", "dataset": "me/x", "task": "first"})
    # Data absent on this machine is told apart from recipe mistakes (the recipe layer may defer it).
    from slice_trl.tasks import MissingDataError

    for kwargs in (dict(source="superni", path=str(tmp_path / "missing"), task="task088"),
                   dict(source="superni", path=str(tmp_path), task="task089"),
                   dict(source="trace", path=str(tmp_path), task="C-STANCE")):
        with pytest.raises(MissingDataError):
            TaskSpec(**kwargs)
    with pytest.raises(TypeError, match="TaskSpec.from_dict"):
        build_task({"source": "builtin", "task": "first"})
    with pytest.raises(ValueError, match="positive integer"):
        build_task(TaskSpec(source="builtin", task="first"), tokenizer=tok, max_length=0)


def test_taskspec_builds_each_local_source(tmp_path, tok):
    (tmp_path / "ni").mkdir()
    write_superni(tmp_path / "ni")
    write_trace(tmp_path / "trace" / "FOMC")
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps({"q": f"q{i}", "a": f"a{i}"}) for i in range(6)))
    spec = TaskSpec.from_dict({"source": "superni", "path": "ni", "task": "task088", "max_eval": 3}, base_dir=tmp_path)
    assert spec.task == "task088_identify_typo_verification" and spec.display_name == spec.task
    specs = [
        spec,
        TaskSpec(source="trace", path=str(tmp_path / "trace"), task="FOMC", max_eval=5),
        TaskSpec(source="generic", path=str(tmp_path / "qa.jsonl"), fields={"prompt": "q", "completion": "a"},
                 name="qa", metric="exact_match", max_eval=2),
        TaskSpec(source="builtin", task="last", max_train=16, max_eval=4),
    ]
    tasks = build_tasks(specs, tokenizer=tok, max_length=256)
    assert [t.name for t in tasks] == ["task088_identify_typo_verification", "FOMC", "qa", "last"]
    assert [t.metric for t in tasks] == ["exact_match", "rougeL", "exact_match", "exact_match"]
    assert [len(t.eval) for t in tasks] == [3, 5, 2, 4] and len(tasks[3].train) == 16
    assert all("length_fit" in t.info for t in tasks)
    assert TaskSpec(source="builtin", name="second").task == "second"  # the name doubles as the task id
    with pytest.raises(ValueError, match="unique"):
        build_tasks([specs[3], TaskSpec(source="builtin", task="last")])


# ---------------------------------------------------------------------------------------------
# Hub sources (datasets.load_dataset replaced: the Hub is unreachable from tests)
# ---------------------------------------------------------------------------------------------

def _fake_hub(monkeypatch, result):
    import datasets

    def fake(*args, **kwargs):
        if isinstance(result, Exception):
            raise result
        return result(*args, **kwargs) if callable(result) else result

    monkeypatch.setattr(datasets, "load_dataset", fake)


def test_hub_offline_errors(monkeypatch):
    # The exception datasets 5.2 raises when the Hub cannot be resolved (observed offline).
    _fake_hub(monkeypatch, ConnectionError("Couldn't reach 'x/ni' on the Hub (LocalEntryNotFoundError)"))
    with pytest.raises(ConnectionError, match="appears offline.*path=<task .json file>"):
        load_superni_task(dataset_id="x/ni", task="task088")
    with pytest.raises(ConnectionError, match="appears offline.*TRACE"):
        load_trace_task(dataset_id="x/trace", task="FOMC")
    with pytest.raises(ConnectionError, match="appears offline"):
        build_task(TaskSpec(source="hub_splits", dataset_id="me/splits", task="first"))
    from datasets.exceptions import DatasetNotFoundError

    _fake_hub(monkeypatch, DatasetNotFoundError("Dataset 'x/none' doesn't exist on the Hub"))
    with pytest.raises(ValueError, match="was not found"):
        load_generic_task("t", dataset_id="x/none", fields={"prompt": "q", "completion": "a"})


def test_hub_superni_rows_filtered_by_task(monkeypatch):
    rows = {"task_name": ["task088_identify_typo_verification"] * 5 + ["task363_sst2"] * 3,
            "id": [str(i) for i in range(8)], "definition": ["Find the typo."] * 5 + ["Sentiment?"] * 3,
            "inputs": [f"in{i}" for i in range(8)], "targets": [f"out{i}" for i in range(8)]}
    _fake_hub(monkeypatch, DatasetDict({"train": Dataset.from_dict(rows)}))
    task = load_superni_task(dataset_id="x/ni", task="task088", max_eval=2)
    assert task.name == "task088_identify_typo_verification" and len(task.train) == 3
    for ex in list(task.train) + list(task.eval):
        i = ex["prompt"][0]["content"].rsplit("in", 1)[1]
        assert ex["prompt"][0]["content"] == f"Find the typo.\n\nInput: in{i}" and ex["completion"][0]["content"] == f"out{i}"
    with pytest.raises(ValueError, match="not in Hub dataset"):
        load_superni_task(dataset_id="x/ni", task="task999")


def test_hub_splits_loads_pushed_configs(monkeypatch):
    pushed = builtin_suite(["first"], n_train=6, n_eval=3)[0]
    calls = []

    def fake(repo, name=None, revision=None, **kw):
        calls.append((repo, name))
        return DatasetDict({"train": pushed.train, "eval": pushed.eval})

    _fake_hub(monkeypatch, fake)
    task = build_task(TaskSpec(source="hub_splits", dataset_id="me/splits", task="first", max_eval=2))
    assert calls == [("me/splits", "first")]
    assert task.metric == "exact_match" and task.train[:] == pushed.train[:] and task.eval[:] == pushed.eval[:2]
    _fake_hub(monkeypatch, DatasetDict({"train": pushed.train}))
    with pytest.raises(ValueError, match="lacks split"):
        build_task(TaskSpec(source="hub_splits", dataset_id="me/splits", task="first"))


def test_load_hub_dataset_passes_other_errors(monkeypatch):
    _fake_hub(monkeypatch, KeyError("boom"))
    with pytest.raises(KeyError):
        tasks_base.load_hub_dataset("x/y", "hint")
