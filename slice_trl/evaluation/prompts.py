"""Prompts and references of seen-task records, exactly as TRL's SFTTrainer trains on them.

Evaluation must start generation from the very context the completion was trained on:
`prompt_token_ids` replays TRL's own tokenisation of prompt/completion records (conversational
and plain strings), `render_prompt` is its text for the stage records, and `reference_text` the
gold answer a prediction is scored against.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from slice_trl.tasks.base import is_conversational

__all__ = ["prompt_token_ids", "render_prompt", "reference_text"]

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
