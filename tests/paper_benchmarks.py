"""Small local copies of the paper's GP/IP benchmarks (and the records of our Alpaca task) for
tests that run a paper recipe offline: the fields of each benchmark's Hub dataset, a few rows."""

import json
from pathlib import Path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ALPACA = [
    {"instruction": "Describe where the cat is.", "input": "", "output": "the cat sat on the mat"},
    {"instruction": "Name the capital of France.", "input": "Answer in one sentence.",
     "output": "Paris is the capital of France."},
]


def local_benchmark_files(folder: Path) -> dict[str, str]:
    """Six records of each paper benchmark (5-shot IP draws from the scored file, never the
    scored record itself), in the fields of its Hub dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {
        "hellaswag": [{"activity_label": "Cooking", "ctx_a": "A man cracks an egg.", "ctx_b": "he",
                       "endings": ["fries it.", "sings.", "flies.", "sleeps."], "label": "0"}] * 6,
        "commonsense_qa": [{"question": "Where is milk kept?", "answerKey": "B",
                            "choices": {"label": list("ABCDE"), "text": ["oven", "fridge", "car", "bed", "roof"]}}] * 6,
        "bbh_fewshot_object_counting": [{"input": "I have a cat and a dog. How many animals do I have?",
                                         "target": "2"}] * 6,
        "slice_alpaca": ALPACA * 3,
    }
    return {name: str(write_jsonl(folder / f"{name}.jsonl", r)) for name, r in rows.items()}
