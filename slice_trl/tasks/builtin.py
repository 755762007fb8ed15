"""A built-in, offline, deterministic suite of short CONFLICTING tasks.

Every task sees the same kind of input, a list of four distinct common words, and a one-line
instruction; the tasks ask for different words of the same list:

    user:      "Words: fox cup tree moon\\nSay the first word."
    assistant: "fox"            (task "first"; "last" -> "moon", "second" -> "cup",
                                  "third" -> "tree", "reverse" -> "moon tree cup fox")

Because the words are distinct, the answers of any two tasks differ on every input. Training
on one task pushes the model towards copying one position of the list, which is what the
earlier task must not do: sequential LoRA fine-tuning of a small instruct model forgets the
earlier task within a few dozen steps, while an instruction-conditioned solution for all tasks
exists (the instruction says which word). Sequences are short (about 20 tokens of content, plus
the chat template) so a stage trains in seconds on CPU. Scored by exact match.

The inputs depend only on ``seed`` and the sizes, never on the task, so all tasks of a suite
(and tasks built one at a time with the same seed and sizes) share their train inputs and their
eval inputs; eval inputs never occur in train.
"""

from __future__ import annotations

import random

from slice_trl.utils.registry import task_sources
from slice_trl.configs.settings import suggest
from slice_trl.tasks.base import LoadOptions, Task, make_task, user_prompt_example

# Common nouns that SmolLM2's tokenizer keeps as one token, with or without a leading space.
WORDS = (
    "apple", "bell", "bird", "boat", "book", "bread", "bus", "car", "cat", "chair", "cloud", "coat",
    "cup", "dog", "door", "egg", "fish", "flag", "fox", "hat", "horse", "house", "key", "lion",
    "milk", "moon", "mouse", "nest", "pen", "pig", "rain", "ring", "rose", "sock", "star", "sun",
    "table", "train", "tree", "wolf",
)
N_WORDS = 4

# name -> (instruction, answer from the word list)
BUILTIN_TASKS = {
    "first": ("Say the first word.", lambda w: w[0]),
    "last": ("Say the last word.", lambda w: w[-1]),
    "second": ("Say the second word.", lambda w: w[1]),
    "third": ("Say the third word.", lambda w: w[2]),
    "reverse": ("Say the words in reverse order.", lambda w: " ".join(reversed(w))),
}
DEFAULT_SEQUENCE = ("first", "last", "second")


def builtin_inputs(n_train: int, n_eval: int, seed: int = 42) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """``(train, eval)`` word lists: ``n_train + n_eval`` distinct ordered 4-tuples of distinct
    words drawn with ``random.Random(seed)``; the first ``n_train`` are train, the rest eval."""
    rng = random.Random(seed)
    seen, lists = set(), []
    while len(lists) < n_train + n_eval:
        words = tuple(rng.sample(WORDS, N_WORDS))
        if words not in seen:  # 40*39*38*37 orderings: repeats are rare, but eval must not leak into train
            seen.add(words)
            lists.append(words)
    return lists[:n_train], lists[n_train:]


def builtin_prompt(words, instruction: str) -> str:
    return f"Words: {' '.join(words)}\n{instruction}"


def builtin_task(
    name: str,
    n_train: int = 256,
    n_eval: int = 64,
    seed: int = 42,
    *,
    tokenizer=None,
    max_length: int | None = None,
) -> Task:
    """One built-in task (see the module docstring); ``name`` is a key of `BUILTIN_TASKS`."""
    if name not in BUILTIN_TASKS:
        raise ValueError(f"Unknown built-in task {name!r}.{suggest(name, BUILTIN_TASKS)} "
                         f"Built-in tasks: {list(BUILTIN_TASKS)}.")
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"n_train={n_train!r} and n_eval={n_eval!r} must both be >= 1.")
    instruction, answer = BUILTIN_TASKS[name]
    train_in, eval_in = builtin_inputs(n_train, n_eval, seed)

    def to_parts(words):
        # The word list is the only shortenable piece; at ~20 tokens it fits any sane budget.
        def render(pieces):
            return user_prompt_example(pieces[0], answer(words))

        return [builtin_prompt(words, instruction)], render

    info = {"source": "builtin", "task": name, "instruction": instruction, "seed": seed}
    return make_task(name, train_in, eval_in, to_parts, "exact_match", info,
                     LoadOptions(tokenizer=tokenizer, max_length=max_length))


def builtin_suite(
    names=None,
    n_train: int = 256,
    n_eval: int = 64,
    seed: int = 42,
    *,
    tokenizer=None,
    max_length: int | None = None,
) -> list[Task]:
    """The built-in tasks ``names`` in order (default: ``first -> last -> second``; all five:
    ``list(BUILTIN_TASKS)``), sharing their inputs."""
    names = list(DEFAULT_SEQUENCE if names is None else names)
    if not names:
        raise ValueError(f"names is empty; choose tasks from {list(BUILTIN_TASKS)}.")
    return [builtin_task(n, n_train, n_eval, seed, tokenizer=tokenizer, max_length=max_length) for n in names]


def validate_spec(spec) -> None:
    """A recipe's builtin entry (`TaskSpec`): no data location; ``task`` (default: ``name``) is a
    built-in task."""
    if spec.path is not None or spec.dataset_id is not None:
        raise spec.error("source='builtin' is generated in code: remove path= and dataset_id=.")
    if spec.task is None and spec.name in BUILTIN_TASKS:
        spec.task = spec.name  # {name: first, source: builtin} is enough
    if spec.task not in BUILTIN_TASKS:
        raise spec.error(f"task={spec.task!r} is not a built-in task.{suggest(spec.task, BUILTIN_TASKS)} "
                         f"Choose one of {list(BUILTIN_TASKS)}.")


@task_sources.register("builtin", validate=validate_spec)
def load_spec(spec, options: LoadOptions) -> Task:
    """The task a validated builtin `TaskSpec` names: ``max_train`` (default 256) and ``max_eval``
    examples generated with ``seed``."""
    task = builtin_task(spec.task, n_train=spec.max_train or 256, n_eval=spec.max_eval, seed=spec.seed,
                        tokenizer=options.tokenizer, max_length=options.max_length)
    task.name = spec.display_name
    if spec.metric:
        task.metric = spec.metric
    return task
