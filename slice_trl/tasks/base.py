"""The task record every loader returns and the trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import Dataset

METRICS = ("exact_match", "rougeL")


@dataclass
class Task:
    """One task of a continual sequence.

    ``train`` and ``eval`` are `datasets.Dataset` objects in one of TRL's two SFT formats:
    prompt/completion strings (``{"prompt": str, "completion": str}``) or conversational
    prompt/completion (``{"prompt": [{"role": "user", ...}], "completion": [{"role":
    "assistant", ...}]}``). ``metric`` is how the held-out split is scored.
    """

    name: str
    train: Dataset
    eval: Dataset
    metric: str = "exact_match"
    info: dict = field(default_factory=dict)  # loader notes: source, shortened/dropped counts

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"Task {self.name!r}: metric={self.metric!r} is unknown; use one of {METRICS}.")
