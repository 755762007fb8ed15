"""What every task loader shares: the `Task` record the trainer consumes and the check of a whole
sequence (`validate_tasks`), the options a loader takes (`LoadOptions`), the paper's split, length
fitting, and Hub reads with a clear offline error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from datasets import Dataset

from slice_trl.utils.registry import metrics
from slice_trl.configs.settings import duplicate_names


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
        try:
            metrics.get(self.metric)  # a registered scorer (slice_trl.evaluation.metrics or a plug-in)
        except ValueError as err:
            raise ValueError(f"Task {self.name!r}: {err}") from None


@dataclass(frozen=True)
class LoadOptions:
    """How a loader names, scores, splits, caps and length-fits a task: the `TaskSpec` fields the
    loaders share (see its help texts), plus the tokenizer and token budget of length fitting
    (both or neither). ``name``/``metric`` None: the loader's default; ``max_eval`` None (hub_splits
    only): the pushed eval split whole."""

    name: str | None = None
    metric: str | None = None
    split: str | None = None
    revision: str | None = None
    seed: int = 42
    max_eval: int | None = 200
    max_train: int | None = None
    tokenizer: object = None
    max_length: int | None = None
    min_keep_tokens: int = 32

    @classmethod
    def of(cls, options: LoadOptions | None = None, **overrides) -> LoadOptions:
        """``options`` (default `LoadOptions()`) with ``overrides`` applied, so that a loader can be
        called as ``load_x(path, max_eval=3)`` or with a whole `LoadOptions`. An unknown keyword is
        a TypeError, as for any function."""
        return replace(options if options is not None else cls(), **overrides)


def read_json(file, lines: bool = False):
    """A JSON file (``lines``: one JSON value a line, blank lines skipped), read with Python's
    json (it accepts the NaN some natural-instructions files hold). Malformed JSON is a
    ValueError naming the file and the place."""
    import json

    with open(file, encoding="utf-8") as fh:
        if not lines:
            try:
                return json.load(fh)
            except json.JSONDecodeError as err:
                raise ValueError(f"task file {str(file)!r} is not valid JSON ({err}); fix or replace "
                                 "the file.") from None
        rows = []
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"task file {str(file)!r} line {n} is not valid JSON ({err}); fix or replace "
                                     "the file.") from None
        return rows


# ---------------------------------------------------------------------------------------------
# The paper's split
# ---------------------------------------------------------------------------------------------

def split_train_eval(ds: Dataset, seed: int = 42, max_eval: int = 200) -> tuple[Dataset, Dataset]:
    """Split one pool of examples into (train, eval) with the paper's protocol.

    Shuffle with ``seed`` (42 in the paper), hold out ``min(max_eval, n - 1)`` examples for
    evaluation, train on the rest. The two calls below are the reference implementation's
    ``shuffle(seed)`` followed by ``train_test_split(test_size=k, seed=seed)``, so for the same
    pool the held-out examples are the reference's. Both use ``np.random.default_rng(seed)``: the
    eval rows are ``p1[p2[:k]]`` and the train rows ``p1[p2[k:]]`` with
    ``p1 = p2 = default_rng(seed).permutation(n)``.

    Raises ``ValueError`` for fewer than 2 examples (no train/eval split is possible; the
    reference would evaluate on its training example) or ``max_eval < 1``.
    """
    n = len(ds)
    if max_eval < 1:
        raise ValueError(f"max_eval={max_eval!r} must be >= 1 (the paper holds out 200).")
    if n < 2:
        raise ValueError(
            f"Cannot split {n} example(s) into train and eval: a task needs at least 2 examples."
        )
    k = min(max_eval, n - 1)
    parts = ds.shuffle(seed=seed).train_test_split(test_size=k, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


# ---------------------------------------------------------------------------------------------
# Length budget: fit prompt + completion into max_length tokens (docs/method.md, "Length budget")
# ---------------------------------------------------------------------------------------------

SHORTEN_MARKER = " ... "


def is_conversational(example: dict) -> bool:
    return isinstance(example.get("prompt"), list)


def _example_format(example: dict) -> str:
    if "prompt" in example and "completion" in example:
        return "conversational" if isinstance(example["prompt"], list) else "prompt_completion"
    if "messages" in example:
        return "messages"
    if "text" in example:
        return "text"
    return "unknown"


def validate_tasks(tasks: Sequence[Task]) -> None:
    """Every error a task sequence can hold (empty, repeated names, empty splits, fields that are
    not TRL's prompt/completion, mixed formats), raised before any model work."""
    if not tasks:
        raise ValueError("tasks is empty: give at least one Task (name, train, eval, metric).")
    names = [t.name for t in tasks]
    dupes = duplicate_names(names)
    if dupes:
        raise ValueError(f"Duplicate task names {dupes}: every task in a sequence needs a unique name.")
    formats = set()
    for task in tasks:
        for split in ("train", "eval"):
            ds = getattr(task, split)
            if ds is None or len(ds) == 0:
                raise ValueError(f"Task {task.name!r} has an empty {split} split; give it at least one example.")
            fmt = _example_format(ds[0])
            if fmt not in ("conversational", "prompt_completion"):
                raise ValueError(
                    f"Task {task.name!r} ({split}) has fields {sorted(ds.column_names)}; expected 'prompt' and "
                    "'completion' (strings, or chat messages lists). Map your fields with a generic task "
                    "source (fields: {prompt: ..., completion: ...})."
                )
            formats.add(fmt)
    if len(formats) > 1:
        raise ValueError(f"Tasks mix data formats {sorted(formats)}; use one format (all conversational or all "
                         "plain prompt/completion) so every stage trains with the same loss.")


def user_prompt_example(prompt: str, completion: str, system: str | None = None) -> dict:
    """TRL's conversational prompt/completion record: the prompt as a user turn (after an
    optional system turn), the completion as the assistant turn."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return {"prompt": messages, "completion": [{"role": "assistant", "content": completion}]}


def sequence_lengths(examples, tokenizer, batch_size: int = 256) -> list[int]:
    """Number of tokens TRL's SFTTrainer trains on for each example (before its truncation).

    Conversational records: ``apply_chat_template(prompt + completion, tokenize=True)``, exactly
    as TRL tokenizes them (batched here: the template renders each conversation alone and the
    tokenizer adds no special tokens, so batching changes nothing); the template closes the
    assistant turn with its end token and TRL adds no other EOS. String records:
    ``tokenizer(prompt + completion + eos)``, since TRL appends the EOS token to a string
    completion that lacks it.
    """
    examples = list(examples)
    lengths = []
    eos = tokenizer.eos_token or ""
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        convs = [ex for ex in chunk if is_conversational(ex)]
        if convs and len(convs) != len(chunk):
            # Mixed formats cannot be batched in one call; they do not occur within a task.
            lengths.extend(sequence_lengths([ex], tokenizer)[0] for ex in chunk)
            continue
        if convs:
            out = tokenizer.apply_chat_template(
                [list(ex["prompt"]) + list(ex["completion"]) for ex in chunk], tokenize=True, return_dict=True
            )
        else:
            texts = [
                ex["prompt"] + ex["completion"] + (eos if eos and not ex["completion"].endswith(eos) else "")
                for ex in chunk
            ]
            out = tokenizer(text=texts)
        lengths.extend(len(ids) for ids in out["input_ids"])
    return lengths


def sequence_length(example: dict, tokenizer) -> int:
    """`sequence_lengths` of one example."""
    return sequence_lengths([example], tokenizer)[0]


def _token_spans(text: str, tokenizer) -> list[tuple[int, int]]:
    """Character span of each token of ``text`` (tokenized alone, no special tokens)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(span) for span in enc["offset_mapping"]]
    # Slow tokenizers have no offsets: rebuild them from decoded prefixes.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    spans, prev = [], 0
    for i in range(1, len(ids) + 1):
        end = len(tokenizer.decode(ids[:i]))
        spans.append((prev, end))
        prev = end
    return spans


def shorten_middle(text: str, keep_tokens: int, tokenizer, spans: list[tuple[int, int]] | None = None) -> str:
    """Keep about ``keep_tokens`` tokens of ``text``: its head and its tail, joined by " ... ".

    The middle goes because the ends carry the structure: a definition opens with the task and
    usually closes with the answer format; an input often ends with its question (task243's
    "How many elements ... ?") or its answer cue (TRACE's "Stance:"). ``keep_tokens <= 0``
    returns "". Cuts fall on token boundaries (character offsets), so no byte is split.
    ``spans`` (from `_token_spans`) saves re-tokenizing ``text`` on repeated cuts.
    """
    if keep_tokens <= 0:
        return ""
    if spans is None:
        spans = _token_spans(text, tokenizer)
    if keep_tokens >= len(spans):
        return text
    head = (keep_tokens + 1) // 2
    tail = keep_tokens - head
    head_end = spans[head - 1][1] if head else 0
    tail_start = spans[len(spans) - tail][0] if tail else len(text)
    return text[:head_end].rstrip() + SHORTEN_MARKER + text[tail_start:].lstrip()


def fit_prompt(pieces, render, tokenizer, max_length: int, min_keep_tokens: int = 32, length: int | None = None):
    """Fit one example into ``max_length`` tokens by shortening its prompt pieces.

    ``pieces``: the prompt's shortenable texts in shortening order (Super-NI: ``[input,
    definition]``). ``render(pieces) -> example`` builds the TRL record from them; the completion
    is never touched. Two passes: first each piece in order is shortened down to
    ``min(min_keep_tokens, its length)`` tokens, so the input goes first but is not wiped out
    while the definition still has room; then each piece in order down to nothing. Lengths are
    measured with `sequence_length` after every cut, so the result is exact for this tokenizer.

    Returns ``(example, shortened)``; ``example`` is None when even empty pieces do not fit
    (the completion plus the template alone exceed the budget): the caller drops it.
    ``length``: the rendered example's length when already measured (batched by the caller).
    """
    original = list(pieces)
    example = render(original)
    if length is None:
        length = sequence_length(example, tokenizer)
    if length <= max_length:
        return example, False
    spans = [_token_spans(p, tokenizer) for p in original]
    n_orig = [len(sp) for sp in spans]
    keep = list(n_orig)  # tokens kept of each piece; every cut restarts from the original text
    marker = len(_token_spans(SHORTEN_MARKER, tokenizer))
    current = list(original)
    for floor_pass in (True, False):
        for i in range(len(original)):
            floor = min(min_keep_tokens, n_orig[i]) if floor_pass else 0
            while length > max_length and keep[i] > floor:
                # Token counts are nearly additive, so cutting the excess (plus the marker the
                # first cut adds) usually fits at once; the loop re-measures and keep[i] strictly
                # decreases, so it ends.
                cost = marker if keep[i] == n_orig[i] else 0
                keep[i] = max(floor, keep[i] - (length - max_length) - cost)
                current[i] = shorten_middle(original[i], keep[i], tokenizer, spans[i])
                example = render(list(current))
                length = sequence_length(example, tokenizer)
            if length <= max_length:
                return example, True
    return None, True


def fit_examples(rows, to_parts, tokenizer=None, max_length: int | None = None, min_keep_tokens: int = 32):
    """Turn raw rows into TRL records, fitted to the length budget when one is given.

    ``to_parts(row) -> (pieces, render)`` (see `fit_prompt`). Without a tokenizer or
    ``max_length`` the rows are rendered unchanged. Returns ``(records, stats)`` with
    ``stats = {"examples": kept, "shortened": n, "dropped": n}``.
    """
    parts = [to_parts(row) for row in rows]
    rendered = [render(list(pieces)) for pieces, render in parts]
    if tokenizer is None or max_length is None:
        return rendered, {"examples": len(rendered), "shortened": 0, "dropped": 0}
    # One batched measurement; only the examples over budget go through the cutting loop.
    lengths = sequence_lengths(rendered, tokenizer)
    records, shortened, dropped = [], 0, 0
    for (pieces, render), example, length in zip(parts, rendered, lengths):
        if length > max_length:
            example, _ = fit_prompt(pieces, render, tokenizer, max_length, min_keep_tokens, length=length)
            if example is None:
                dropped += 1
                continue
            shortened += 1
        records.append(example)
    return records, {"examples": len(records), "shortened": shortened, "dropped": dropped}


def _check_budget(tokenizer, max_length) -> None:
    if (tokenizer is None) != (max_length is None):
        raise ValueError(
            "Length fitting needs both a tokenizer and max_length (got "
            f"tokenizer={'set' if tokenizer is not None else None}, max_length={max_length!r}); pass both, or neither."
        )
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length={max_length!r} must be a positive integer (the paper uses 256).")


def make_task(name: str, train_rows, eval_rows, to_parts, metric: str, info: dict,
              options: LoadOptions = LoadOptions()) -> Task:
    """Shared tail of every loader: cap train, render and fit both splits, record the counts.
    ``options`` gives the cap (``max_train``) and the fitting (``tokenizer``, ``max_length``,
    ``min_keep_tokens``); its other fields are the loader's business.

    ``max_train`` caps the training rows BEFORE fitting, so the same instances are chosen
    whatever the tokenizer. Both splits are fitted: evaluating on prompts the model was never
    trained on in that shape (or longer than the budget) would mix length effects into the
    score. ``info["length_fit"]`` = ``{"max_length": int | None, "train": stats, "eval": stats}``
    with stats from `fit_examples`.
    """
    tokenizer, max_length, max_train = options.tokenizer, options.max_length, options.max_train
    _check_budget(tokenizer, max_length)
    train_rows = list(train_rows)
    if max_train is not None:
        if max_train < 1:
            raise ValueError(f"max_train={max_train!r} must be >= 1 or None (no cap).")
        train_rows = train_rows[:max_train]
    train, train_stats = fit_examples(train_rows, to_parts, tokenizer, max_length, options.min_keep_tokens)
    evals, eval_stats = fit_examples(eval_rows, to_parts, tokenizer, max_length, options.min_keep_tokens)
    if not train or not evals:
        which = "train" if not train else "eval"
        raise ValueError(
            f"Task {name!r}: no {which} example fits max_length={max_length} tokens "
            f"(dropped {train_stats['dropped'] if not train else eval_stats['dropped']}); raise max_length."
        )
    info = dict(info)
    info.update(n_train=len(train), n_eval=len(evals))
    info["length_fit"] = {"max_length": max_length, "train": train_stats, "eval": eval_stats}
    return Task(name=name, train=Dataset.from_list(train), eval=Dataset.from_list(evals), metric=metric, info=info)


# ---------------------------------------------------------------------------------------------
# Hub loading with a clear offline error
# ---------------------------------------------------------------------------------------------

def load_hub_dataset(dataset_id: str, local_hint: str, **kwargs):
    """``datasets.load_dataset(dataset_id, **kwargs)``, with unreachable-Hub errors turned into
    one message that says the machine looks offline and how to use local files instead
    (``local_hint``). A missing repo or config is reported as such."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, **kwargs)
    except Exception as exc:  # noqa: BLE001 - classified below, re-raised otherwise
        text = f"{type(exc).__name__}: {exc}"
        offline_markers = ("ConnectionError", "Couldn't reach", "offline", "LocalEntryNotFound",
                           "Name or service not known", "Max retries", "timed out", "OfflineModeIsEnabled")
        if isinstance(exc, (ConnectionError, TimeoutError)) or any(m in text for m in offline_markers):
            raise ConnectionError(
                f"Could not reach the Hugging Face Hub for dataset {dataset_id!r}: this machine appears "
                f"offline ({text}). {local_hint}"
            ) from exc
        if type(exc).__name__ in ("DatasetNotFoundError", "RepositoryNotFoundError", "FileNotFoundError"):
            raise ValueError(f"Dataset {dataset_id!r} was not found ({text}). {local_hint}") from exc
        raise


# Transport-level failures of the HTTP clients under datasets/huggingface_hub (httpx, requests,
# urllib3), by class name: none of these libraries is imported to check them.
NETWORK_ERRORS = {"TransportError", "NetworkError", "ConnectError", "RemoteProtocolError", "TimeoutException",
                  "ConnectionError", "Timeout", "ProtocolError", "NewConnectionError", "MaxRetryError"}


def is_network_error(err: BaseException) -> bool:
    """A transport-level failure (refused/dropped connection, timeout) of any HTTP client, also
    when wrapped by datasets/huggingface_hub."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if any(c.__name__ in NETWORK_ERRORS for c in type(err).__mro__):
            return True
        err = err.__cause__ or err.__context__
    return False
