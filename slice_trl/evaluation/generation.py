"""Scoring a model on the seen tasks (an entry of R): batched greedy generation and `evaluate_task`.

docs/method.md, "Evaluation and metrics": greedy generation on the first ``EvalConfig.max_samples``
held-out examples, left padding, KV cache, scored by exact match (classification-like tasks) or
ROUGE-L (generation tasks). The model sees exactly the prompt it was trained on
(`slice_trl.evaluation.prompts.prompt_token_ids`).

The prediction of a prompt is the text generated AFTER the padded input, up to the first EOS. The
reference implementation cut at ``attention_mask.sum()`` instead, which under left padding glues
the tail of the prompt to every padded row's prediction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from slice_trl.utils import distributed
from slice_trl.models.lora import eval_mode
from slice_trl.configs.settings import EvalConfig
from slice_trl.tasks.base import Task
from slice_trl.evaluation.metrics import score_predictions, sni_normalize
from slice_trl.evaluation.prompts import prompt_token_ids, reference_text, render_prompt

logger = logging.getLogger(__name__)

N_SAMPLES = 3  # (prompt, prediction, reference) triples kept per task for the stage record

__all__ = ["TaskScore", "generating_model", "model_device", "generate", "generate_tokens", "evaluate_task"]


# ---------------------------------------------------------------------------------------------
# Batched greedy generation
# ---------------------------------------------------------------------------------------------

def generating_model(model, accelerator=None):
    """The module that has ``generate``: strips DDP/DeepSpeed/compile wrappers, keeps PeftModel."""
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    while not hasattr(model, "generate") and hasattr(model, "module"):
        model = model.module
    return model


def model_device(model) -> torch.device:
    """Where the model's inputs go: its ``device`` attribute, else that of its first parameter."""
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
    cut before the first EOS. Each batch is a left-padded ``input_ids``/``attention_mask`` pair of
    shape ``(rows, width)`` (``width`` = its longest prompt); ``generate`` returns
    ``(rows, width + new)`` and columns ``width:`` are the new tokens."""
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = eos_ids[0] if eos_ids else 0
    device = model_device(model)
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
    model = generating_model(model, accelerator)
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

    with eval_mode(model):
        local = _generate_ids(model, tokenizer, local_prompts, batch_size, max_new_tokens, synced_gpus=zero3) \
            if local_prompts else []
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
    ``predictions``: every scored example, ``{"i": position in the task's held-out split,
    "prediction": str, "reference": str, "score": float}``, so a claim about what a task learned
    (e.g. a constant answer) can be checked from the record. ``off_label``: for a task with a label
    set (``task.info["labels"]``, from labels.json), how many predictions are none of its labels
    (after `sni_normalize`; they score 0), else None.
    """

    task: str
    metric: str
    score: float
    n: int
    samples: list[dict] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)
    off_label: int | None = None  # label tasks (task.info["labels"]): predictions outside the label set

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "score": self.score, "n": self.n, "samples": self.samples,
                "predictions": self.predictions, "off_label": self.off_label}


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
    every = [{"i": i, "prediction": p, "reference": r, "score": float(s)}
             for i, (p, r, s) in enumerate(zip(predictions, references, scores))]
    labels = task.info.get("labels")  # a label task: an answer outside its label set is wrong, and counted
    allowed = None if labels is None else {sni_normalize(x) for x in labels}
    off = None if allowed is None else sum(sni_normalize(p) not in allowed for p in predictions)
    return TaskScore(task=task.name, metric=task.metric, score=sum(scores) / n, n=n, samples=samples,
                     predictions=every, off_label=off)

