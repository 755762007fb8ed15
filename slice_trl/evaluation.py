"""Scoring a model on the seen tasks (row t of R) and on general benchmarks (GP/IP).

docs/method.md, "Evaluation and metrics":

- Seen tasks: greedy generation on the first ``EvalConfig.max_samples`` held-out examples, left
  padding, KV cache, scored by exact match (classification-like tasks) or ROUGE-L (generation
  tasks). The model sees exactly the prompt it was trained on: `prompt_token_ids` replays TRL's
  own tokenisation of prompt/completion records.
- General ability: lm-evaluation-harness on an in-memory model; GP = mean zero-shot primary
  metric, IP = the same few-shot.

The prediction of a prompt is the text generated AFTER the padded input, up to the first EOS. The
reference implementation cut at ``attention_mask.sum()`` instead, which under left padding glues
the tail of the prompt to every padded row's prediction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from . import distributed
from .config import EvalConfig
from .tasks.base import Task, is_conversational

logger = logging.getLogger(__name__)

N_SAMPLES = 3  # (prompt, prediction, reference) triples kept per task for the stage record

__all__ = [
    "TaskScore",
    "LMEvalDataError",
    "prompt_token_ids",
    "render_prompt",
    "reference_text",
    "normalize_answer",
    "exact_match",
    "rouge_l",
    "score_predictions",
    "generate",
    "generate_tokens",
    "evaluate_task",
    "evaluate_general",
    "evaluate_general_lm",
]


# ---------------------------------------------------------------------------------------------
# Prompts and references, exactly as TRL trains on them
# ---------------------------------------------------------------------------------------------

def _chat_template_kwargs(example: dict) -> dict:
    """The extra `apply_chat_template` arguments TRL takes from a record (``tools`` as a list or a
    JSON string, ``chat_template_kwargs``)."""
    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    kwargs = dict(example.get("chat_template_kwargs") or {})
    if tools is not None:
        kwargs["tools"] = tools
    return kwargs


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _completion_string(example: dict, tokenizer) -> str:
    """A string completion as TRL tokenizes it: with the tokenizer's EOS appended unless present."""
    completion = example.get("completion") or ""
    eos = tokenizer.eos_token
    if eos and not completion.endswith(eos):
        completion += eos
    return completion


def prompt_token_ids(example: dict, tokenizer) -> list[int]:
    """Token ids of the context TRL 1.16's SFTTrainer trains ``example``'s completion on.

    TRL (``SFTTrainer._prepare_dataset`` / ``tokenize_fn``) tokenizes the prompt and the
    prompt+completion separately, and the completion starts where the two id lists diverge
    (usually right after the prompt):

    - conversational: ``apply_chat_template(prompt, add_generation_prompt=True)`` vs
      ``apply_chat_template(prompt + completion)``; both tokenize the rendered text with
      ``add_special_tokens=False`` (a template writes its own BOS);
    - strings: ``tokenizer(text=prompt)`` vs ``tokenizer(text=prompt + completion + eos)``, WITH
      the tokenizer's special tokens (Llama-style tokenizers prepend BOS here).

    The same prefix is returned here, so generation starts from the exact training context. When
    tokens merge across the prompt/completion boundary (TRL warns about it), that context is
    shorter than the prompt alone; the reference completion is used only to find this boundary,
    as TRL does. Returns a flat ``list[int]``.
    """
    if is_conversational(example):
        kwargs = _chat_template_kwargs(example)
        prompt = list(example["prompt"])
        prompt_ids = tokenizer.apply_chat_template(
            prompt, tokenize=True, return_dict=True, add_generation_prompt=True, **kwargs
        )["input_ids"]
        completion = list(example.get("completion") or [])
        if not completion:
            return list(prompt_ids)
        full_ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True, **kwargs)[
            "input_ids"
        ]
    else:
        prompt_ids = tokenizer(text=example["prompt"])["input_ids"]
        full_ids = tokenizer(text=example["prompt"] + _completion_string(example, tokenizer))["input_ids"]
    return list(prompt_ids[: _common_prefix_length(prompt_ids, full_ids)])


def _special_prefix_text(prompt: str, tokenizer) -> str:
    """Text of the special tokens the tokenizer puts IN FRONT of a plain string (e.g. Llama's
    ``<|begin_of_text|>``); "" for tokenizers that add none."""
    with_special = tokenizer(text=prompt)["input_ids"]
    plain = tokenizer(text=prompt, add_special_tokens=False)["input_ids"]
    for k in range(len(with_special) - len(plain) + 1):
        if with_special[k:k + len(plain)] == plain:
            return tokenizer.decode(with_special[:k], skip_special_tokens=False) if k else ""
    return ""


def render_prompt(example: dict, tokenizer) -> str:
    """The prompt text the model sees at training time, special tokens included.

    Conversational records: ``apply_chat_template(prompt, add_generation_prompt=True,
    tokenize=False)`` (with the record's ``tools``/``chat_template_kwargs``, as TRL passes them).
    String records: the special tokens the tokenizer prepends (BOS), then the prompt. In both
    cases ``tokenizer(render_prompt(ex), add_special_tokens=False).input_ids ==
    prompt_token_ids(ex)`` for byte-level BPE tokenizers and chat templates; when the text does
    not round-trip (a token merged across the prompt/completion boundary, or a SentencePiece
    tokenizer that spells a word differently after a special token), the decoded training ids
    are returned instead. Generation uses `prompt_token_ids`, which is exact for every tokenizer.
    """
    ids = prompt_token_ids(example, tokenizer)
    if is_conversational(example):
        text = tokenizer.apply_chat_template(
            list(example["prompt"]), tokenize=False, add_generation_prompt=True, **_chat_template_kwargs(example)
        )
    else:
        text = _special_prefix_text(example["prompt"], tokenizer) + example["prompt"]
    if tokenizer(text=text, add_special_tokens=False)["input_ids"] == ids:
        return text
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):  # multimodal-style parts: keep the text ones
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def reference_text(example: dict) -> str:
    """The gold answer of a record: the completion string, or the text of the completion
    messages (joined by newlines when there are several)."""
    completion = example["completion"]
    if isinstance(completion, list):
        return "\n".join(_message_text(m) for m in completion)
    return str(completion)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """Lower-case, strip, and collapse every run of whitespace to one space."""
    return " ".join(str(text).lower().split())


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(ref))


# CJK ideographs, kana and hangul: scripts written without spaces, one token per character.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_ROUGE_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


class _UnicodeRougeTokenizer:
    """rouge_score's default tokenizer keeps only ``[a-z0-9]`` and so turns Chinese, accented or
    Cyrillic text into nothing (every C-STANCE prediction would score 0). This one lower-cases
    and keeps Unicode letters and digits (runs of them are words, CJK characters are one token
    each), and is identical to the default one on ASCII text (no stemming in either)."""

    def tokenize(self, text: str) -> list[str]:
        return _ROUGE_TOKEN_RE.findall(text.lower())


_SCORER = None


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure in [0, 1] from ``rouge_score.rouge_scorer.RougeScorer(["rougeL"])``
    (sentence-level LCS, no stemming), with a Unicode-aware tokenizer (`_UnicodeRougeTokenizer`;
    identical to rouge_score's own on ASCII text). As in rouge_score, a text without any word
    scores 0."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_UnicodeRougeTokenizer())
    return float(_SCORER.score(ref, pred)["rougeL"].fmeasure)


METRIC_FUNCTIONS: dict[str, Callable[[str, str], float]] = {"exact_match": exact_match, "rougeL": rouge_l}


def score_predictions(predictions: Sequence[str], references: Sequence[str], metric: str) -> list[float]:
    """Per-example scores in [0, 1] with ``metric`` ("exact_match" or "rougeL")."""
    if metric not in METRIC_FUNCTIONS:
        raise ValueError(f"Unknown metric {metric!r}; use one of {sorted(METRIC_FUNCTIONS)}.")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    fn = METRIC_FUNCTIONS[metric]
    return [fn(p, r) for p, r in zip(predictions, references)]


# ---------------------------------------------------------------------------------------------
# Batched greedy generation
# ---------------------------------------------------------------------------------------------

def _generating_model(model, accelerator=None):
    """The module that has ``generate``: strips DDP/DeepSpeed/compile wrappers, keeps PeftModel."""
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    while not hasattr(model, "generate") and hasattr(model, "module"):
        model = model.module
    return model


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS plus the model's generation EOS ids
    (chat models often stop on an end-of-turn token that is not ``tokenizer.eos_token``)."""
    ids = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, gen_eos):
        for i in (value if isinstance(value, (list, tuple)) else [value]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def _encode_prompt(prompt, tokenizer) -> list[int]:
    if isinstance(prompt, str):
        # Rendered prompts already carry their special tokens (see render_prompt).
        return list(tokenizer(text=prompt, add_special_tokens=False)["input_ids"])
    return [int(i) for i in prompt]


def _cut_left(ids: list[int], max_input_tokens: int, bos_id: int | None) -> list[int]:
    """Keep the last ``max_input_tokens`` ids; a leading BOS is kept in front (models are never
    trained without it, and the end of a prompt holds its question and answer cue)."""
    if len(ids) <= max_input_tokens:
        return ids
    if bos_id is not None and ids and ids[0] == bos_id and max_input_tokens > 1:
        return [bos_id] + ids[len(ids) - (max_input_tokens - 1):]
    return ids[len(ids) - max_input_tokens:]


@torch.no_grad()
def _generate_ids(model, tokenizer, prompts: list[list[int]], batch_size: int, max_new_tokens: int,
                  synced_gpus: bool = False) -> list[list[int]]:
    """Greedy-decode ``prompts`` (lists of ids) in batches; returns the new ids of each prompt,
    cut before the first EOS."""
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = eos_ids[0] if eos_ids else 0
    device = _model_device(model)
    # Longest first: batches of similar length waste little on padding, and an out-of-memory
    # error shows up on the first batch rather than after minutes.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # left padding: the prompts end where generation starts
            ids = prompts[i]
            if ids:
                input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids):] = 1
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            eos_token_id=eos_ids or None,
            pad_token_id=pad_id,
            synced_gpus=synced_gpus,
        )
        # Everything past the PADDED input length is new; attention_mask.sum() would point
        # inside the prompt of every padded row.
        new_tokens = generated[:, width:].tolist()
        for row, i in enumerate(idx):
            tokens = new_tokens[row]
            for k, tok in enumerate(tokens):
                if tok in eos_ids:
                    tokens = tokens[:k]
                    break
            out[i] = tokens
    return out  # type: ignore[return-value]


def generate_tokens(model, tokenizer, prompts: Sequence[str | Sequence[int]], batch_size: int = 8,
                    max_new_tokens: int = 64, max_input_tokens: int = 512, accelerator=None) -> list[list[int]]:
    """Batched greedy generation; returns, per prompt and in prompt order, the generated token
    ids (``list[int]``, at most ``max_new_tokens``) up to and excluding the first EOS.

    ``prompts``: rendered prompt strings (tokenized as-is, ``add_special_tokens=False``: a
    `render_prompt` text already holds its special tokens) or lists of token ids (what
    `prompt_token_ids` returns; exact for every tokenizer). A prompt longer than
    ``max_input_tokens`` keeps its last tokens (plus a leading BOS). Rows are LEFT-padded
    (built directly as tensors, so the tokenizer's ``padding_side`` is never touched and no pad
    token is required), the KV cache is on, and decoding stops at the tokenizer's or the model's
    EOS ids. The new tokens are those after the PADDED input length.

    Works on a plain ``PreTrainedModel`` and on a ``PeftModel``; the model is put in eval mode and
    every submodule's train/eval mode is restored afterwards. With an ``accelerator`` running
    more than one process, rank r generates prompts r, r + W, r + 2W, ... and the results are
    gathered back into prompt order on every rank (under DeepSpeed ZeRO-3 every rank runs the same
    number of batches with ``synced_gpus``, as sharded forward passes must be collective).
    """
    if batch_size < 1 or max_new_tokens < 1 or max_input_tokens < 1:
        raise ValueError(f"batch_size={batch_size}, max_new_tokens={max_new_tokens} and "
                         f"max_input_tokens={max_input_tokens} must all be >= 1.")
    model = _generating_model(model, accelerator)
    ids = [_encode_prompt(p, tokenizer) for p in prompts]
    n_long = sum(len(i) > max_input_tokens for i in ids)
    if n_long:
        logger.warning("%d of %d prompts are longer than max_input_tokens=%d and lose their first tokens.",
                       n_long, len(ids), max_input_tokens)
    ids = [_cut_left(i, max_input_tokens, tokenizer.bos_token_id) for i in ids]
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    zero3 = world > 1 and distributed.zero3_enabled()
    mine = list(range(rank, len(ids), world))
    if zero3:
        # ZeRO-3 gathers parameters collectively at every forward: ranks must run equally many
        # generate() calls, so short shards are topped up with a repeated prompt (-1 = discard).
        per_rank = math.ceil(len(ids) / world) if ids else 0
        mine = mine + [-1] * (per_rank - len(mine))
    local_prompts = [ids[i] if i >= 0 else (ids[0] if ids else []) for i in mine]

    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        local = _generate_ids(model, tokenizer, local_prompts, batch_size, max_new_tokens, synced_gpus=zero3) \
            if local_prompts else []
    finally:
        for module, mode in modes.items():
            module.training = mode
    if world == 1:
        return local
    from accelerate.utils import gather_object

    pairs = gather_object([(i, toks) for i, toks in zip(mine, local) if i >= 0])
    out: list[list[int] | None] = [None] * len(ids)
    for i, toks in pairs:
        out[i] = list(toks)
    missing = [i for i, toks in enumerate(out) if toks is None]
    if missing:  # a sharding bug must not silently score as empty predictions
        raise RuntimeError(f"Distributed generation lost predictions for prompts {missing[:10]}.")
    return out  # type: ignore[return-value]


def generate(model, tokenizer, prompts: Sequence[str | Sequence[int]], batch_size: int = 8,
             max_new_tokens: int = 64, max_input_tokens: int = 512, accelerator=None) -> list[str]:
    """Batched greedy generation (see `generate_tokens`); returns one prediction string per
    prompt, in prompt order: the new tokens up to the first EOS, decoded with special tokens
    skipped. Same arguments, distributed behaviour and mode handling as `generate_tokens`."""
    tokens = generate_tokens(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             max_input_tokens=max_input_tokens, accelerator=accelerator)
    return [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]


# ---------------------------------------------------------------------------------------------
# One task's score (an entry of R)
# ---------------------------------------------------------------------------------------------

@dataclass
class TaskScore:
    """Score of one task after one stage.

    ``score``: mean per-example metric in [0, 1] over the ``n`` scored examples. ``samples``:
    the first few ``{"prompt": str, "prediction": str, "reference": str}`` for the stage record.
    """

    task: str
    metric: str
    score: float
    n: int
    samples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "score": self.score, "n": self.n, "samples": self.samples}


def evaluate_task(model, tokenizer, task: Task, cfg: EvalConfig | None = None, accelerator=None) -> TaskScore:
    """Greedy-generate answers for the first ``cfg.max_samples`` examples of ``task.eval`` and
    score them with ``task.metric``. Every rank returns the same `TaskScore`."""
    cfg = cfg or EvalConfig()
    n = min(int(cfg.max_samples), len(task.eval))
    if n == 0:
        raise ValueError(f"Task {task.name!r} has no eval examples to score.")
    examples = [task.eval[i] for i in range(n)]
    prompts = [prompt_token_ids(ex, tokenizer) for ex in examples]
    references = [reference_text(ex) for ex in examples]
    predictions = generate(model, tokenizer, prompts, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                           max_input_tokens=cfg.max_input_tokens, accelerator=accelerator)
    scores = score_predictions(predictions, references, task.metric)
    samples = [{"prompt": render_prompt(ex, tokenizer), "prediction": p, "reference": r}
               for ex, p, r in list(zip(examples, predictions, references))[:N_SAMPLES]]
    return TaskScore(task=task.name, metric=task.metric, score=sum(scores) / n, n=n, samples=samples)


# ---------------------------------------------------------------------------------------------
# General ability (GP / IP) through lm-evaluation-harness
# ---------------------------------------------------------------------------------------------

# Primary metric of a task when EvalConfig.lm_eval_metrics names none: docs/method.md scores HellaSwag
# by acc_norm, CommonsenseQA by acc and BBH by exact_match.
PRIMARY_METRICS = ("acc_norm", "acc", "exact_match", "em", "f1", "rougeL", "rouge1", "bleu", "mcc")

def _local_hint(name: str) -> str:
    """The fix for a task whose data cannot be loaded, on one line."""
    from .general import LOCAL_TEMPLATES

    if name in LOCAL_TEMPLATES:
        local = (f"give a local copy with evaluation.lm_eval_local_data: {{{name}: /path/{name}.jsonl}} "
                 "(README, 'General ability (GP/IP)')")
    else:
        local = ("point evaluation.lm_eval_include_path at a folder with a task YAML of the same name that reads a "
                 "local file (dataset_path: json, dataset_kwargs: {data_files: {test: /abs/file.jsonl}}, "
                 "test_split: test)")
    return (f"Fix: {local}, fill the datasets cache on a machine with network access, or remove {name!r} from "
            "evaluation.lm_eval_tasks.")


class LMEvalDataError(RuntimeError):
    """An lm-eval task whose data cannot be loaded (offline Hub, missing dataset or file)."""


def _require_lm_eval():
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(
            "General-ability evaluation (EvalConfig.lm_eval_tasks) needs lm-evaluation-harness: "
            "pip install 'slice-trl[eval]' (or set lm_eval_tasks to an empty list to skip GP/IP)."
        ) from err
    return simple_evaluate, HFLM, TaskManager


def _task_manager(TaskManager, include_path, names: Sequence[str]):
    """A TaskManager that knows ``names``. Indexing lm-eval's built-in task folder takes tens of
    seconds, so when every name is defined under ``include_path`` (a folder or a list of
    folders) only those folders are indexed."""
    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(name in local.all_tasks for name in names):
            return local
    return TaskManager(include_path=include_path)


_DATA_ERROR_MARKERS = ("ConnectionError", "Couldn't reach", "offline", "Offline", "LocalEntryNotFound",
                       "Name or service not known", "Max retries", "timed out", "DatasetNotFound",
                       "doesn't exist on the Hub", "FileNotFound", "RepositoryNotFound", "HTTPError",
                       "Unable to find", "EmptyDatasetError", "DataFilesNotFound")


def _load_task(task_manager, name: str):
    """Build the lm-eval task/group/tag ``name`` (this loads its data), with clear errors."""
    try:
        loaded = task_manager.load([name])
    except KeyError as err:
        raise ValueError(
            f"lm-eval task {name!r} is not a built-in task and is not defined under "
            f"evaluation.lm_eval_include_path ({err}). " + _local_hint(name)
        ) from None
    except Exception as err:  # noqa: BLE001 - data errors are classified, the rest re-raised
        text = f"{type(err).__name__}: {err}"
        if isinstance(err, (ConnectionError, TimeoutError, FileNotFoundError)) or any(
                m in text for m in _DATA_ERROR_MARKERS):
            raise LMEvalDataError(
                f"lm-eval task {name!r}: its data could not be loaded ({text.splitlines()[0][:300]}). " + _local_hint(name)
            ) from err
        raise
    if name in loaded.get("groups", {}):
        return [loaded["groups"][name]]
    return list(loaded["tasks"].values())  # one task, or every task of a tag


def _metric_entries(entry: dict) -> dict[str, float]:
    """{"acc,none": 0.5, ...} -> {"acc,none": 0.5} without stderr and bookkeeping keys."""
    return {k: float(v) for k, v in entry.items()
            if "," in k and "_stderr" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _primary(entry: dict, preferred: str | None) -> tuple[str, float] | None:
    """(metric key, value) of the primary metric of one lm-eval result entry."""
    metrics = _metric_entries(entry)
    if not metrics:
        return None
    if preferred:
        for key, value in metrics.items():
            if key == preferred or key.split(",", 1)[0] == preferred:
                return key, value
        raise ValueError(f"lm-eval result has no metric {preferred!r}; it has {sorted(metrics)}.")
    for name in PRIMARY_METRICS:
        for key, value in metrics.items():
            if key.split(",", 1)[0] == name:
                return key, value
    key = next(iter(metrics))
    return key, metrics[key]


def _score_of(name: str, out: dict, preferred: str | None) -> dict:
    """{"metric": key, "score": value, "n": examples, "num_fewshot": shots} for task/group ``name``."""
    results = out["results"]
    found = _primary(results.get(name, {}), preferred)
    n_samples = out.get("n-samples", {})
    if found is None:  # a group without aggregate metrics: mean of its subtasks' primary metrics
        subtasks = out.get("group_subtasks", {}).get(name) or [k for k in results if k != name]
        parts = [_primary(results[s], preferred) for s in subtasks if s in results]
        parts = [p for p in parts if p is not None]
        if not parts:
            raise ValueError(f"lm-eval returned no metric for task {name!r}: {results.get(name)}")
        key = parts[0][0]
        value = sum(p[1] for p in parts) / len(parts)
        n = sum(n_samples.get(s, {}).get("effective", 0) for s in subtasks)
    else:
        key, value = found
        n = n_samples.get(name, {}).get("effective")
        if n is None:
            n = sum(v.get("effective", 0) for v in n_samples.values())
    shots = out.get("n-shot", {}).get(name)
    return {"metric": key, "score": value, "n": n, "num_fewshot": shots}


def evaluate_general(model, tokenizer, cfg: EvalConfig, accelerator=None) -> dict:
    """GP and IP on ``cfg.lm_eval_tasks`` with lm-evaluation-harness (the ``eval`` extra).

    Each task is run twice on the in-memory model (``HFLM(pretrained=model, ...)``, a PeftModel
    works): zero-shot, then ``cfg.lm_eval_fewshot_overrides.get(task, cfg.lm_eval_num_fewshot)``
    shots (lm-eval keeps a task's own ``num_fewshot: 0`` whatever is asked; the shots really used
    are reported). The primary metric of a task is ``cfg.lm_eval_metrics[task]`` when given, else
    the first of acc_norm, acc, exact_match, ... that the task reports. Returns::

        {"GP": mean zero-shot score, "IP": mean few-shot score,
         "zero_shot": {task: {"metric": "acc_norm,none", "score": float, "n": int, "num_fewshot": int}},
         "few_shot":  {task: {...}},
         "tasks": [...], "limit": cfg.lm_eval_limit}

    Each rank evaluates everything (an in-memory HFLM is single-process), so under DDP/ZeRO-3
    every rank returns the same numbers. Raises ``ValueError`` for an unknown task name and
    `LMEvalDataError` when a task's data cannot be loaded, both naming the task and how to use a
    local task YAML.
    """
    from . import general  # noqa: F401  (its import filters lm-eval's notes on in-memory models)

    _, HFLM, _ = _require_lm_eval()
    if not cfg.lm_eval_tasks:
        raise ValueError("EvalConfig.lm_eval_tasks is empty: name at least one lm-eval task (e.g. 'hellaswag').")
    model = _generating_model(model, accelerator)
    modes = {m: m.training for m in model.modules()}
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, device=str(_model_device(model)))
        return evaluate_general_lm(lm, cfg)
    finally:
        for module, mode in modes.items():  # HFLM calls model.eval()
            module.training = mode


@contextlib.contextmanager
def _quiet_lm_eval():
    """lm-eval logs ~20 INFO lines per task run (seeds, task selection, contexts); keep its
    warnings and errors only, unless the user asked for INFO on the ``lm_eval`` logger. Where the
    run's console has no progress bars (quiet, output not a terminal: `slice_trl.console`), lm-eval's
    own tqdm bars (4-5 per task run, written to ``sys.stderr``) are dropped too; log records still
    show, since logging handlers hold the real stream."""
    import io

    from . import console

    lm_logger = logging.getLogger("lm_eval")
    level = lm_logger.level
    if level == logging.NOTSET:
        lm_logger.setLevel(logging.WARNING)
    bars = contextlib.nullcontext() if console.bars_enabled() else contextlib.redirect_stderr(io.StringIO())
    # simple_evaluate records `git describe` of the current directory (meaningless for an in-memory
    # model) and lets git print "fatal: not a git repository" outside a checkout: skip that call
    import lm_eval.evaluator
    from unittest import mock

    no_git = mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None, create=True)
    try:
        with bars, no_git:
            yield
    finally:
        lm_logger.setLevel(level)


def evaluate_general_lm(lm, cfg: EvalConfig) -> dict:
    """`evaluate_general` on any lm-eval model object (an ``lm_eval.api.model.LM``): each of
    ``cfg.lm_eval_tasks`` zero-shot and few-shot, found in our own task folder, the local-data
    tasks and ``cfg.lm_eval_include_path`` (`slice_trl.general.task_folders`) or lm-eval's own."""
    from .general import task_folders

    simple_evaluate, _, TaskManager = _require_lm_eval()
    names = list(cfg.lm_eval_tasks)
    if not names:
        raise ValueError("EvalConfig.lm_eval_tasks is empty: name at least one lm-eval task (e.g. 'hellaswag').")
    overrides = dict(cfg.lm_eval_fewshot_overrides or {})
    metrics = dict(cfg.lm_eval_metrics or {})
    report = {"zero_shot": {}, "few_shot": {}}
    with task_folders(cfg) as folders, _quiet_lm_eval():
        task_manager = _task_manager(TaskManager, folders, names)
        for name in names:
            for key, shots in (("zero_shot", 0), ("few_shot", int(overrides.get(name, cfg.lm_eval_num_fewshot)))):
                # Task objects are built afresh for every run: simple_evaluate writes num_fewshot
                # into them, and a 0 written by the zero-shot run would pin the few-shot run to 0.
                tasks = _load_task(task_manager, name)
                out = simple_evaluate(model=lm, tasks=tasks, num_fewshot=shots, limit=cfg.lm_eval_limit,
                                      task_manager=task_manager, log_samples=False, bootstrap_iters=0)
                if out is None:  # non-zero lm.rank; cannot happen with an in-memory model
                    raise RuntimeError(f"lm-eval returned no results for {name!r} on this process.")
                report[key][name] = _score_of(name, out, metrics.get(name))
    gp = sum(v["score"] for v in report["zero_shot"].values()) / len(names)
    ip = sum(v["score"] for v in report["few_shot"].values()) / len(names)
    return {"GP": gp, "IP": ip, **report, "tasks": names, "limit": cfg.lm_eval_limit}
