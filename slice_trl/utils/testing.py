"""Tiny offline models for tests, examples and CPU smoke runs (and DeepSpeed on CPU without a compiler).

`tiny_tokenizer()` is a byte-level tokenizer (one token per UTF-8 byte plus ChatML specials)
built without any download; `tiny_llama()` is a randomly initialised Llama sized for it.
"""

from __future__ import annotations

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def tiny_tokenizer():
    """Byte-level BPE with no merges: 4 special tokens + 256 byte tokens, ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def no_deepspeed_op_builds() -> None:
    """DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce (``deepspeed_shm_comm``:
    g++ and ninja, cached in ~/.cache/torch_extensions) when its process group starts, after
    probing every op with compiler runs; only ``inference_all_reduce`` uses that op, training does
    not. Declaring no op buildable (the dict `deepspeed.ops` would probe into) skips both, so the
    tests need no compiler. A no-op without DeepSpeed."""
    try:
        import deepspeed.ops
    except ImportError:
        return
    vars(deepspeed.ops)["__compatible_ops__"] = {}


# The README's compatibility table, row by row: name -> (init section, strategy name or None). The
# engine and bf16 tests both run every row (tests/test_engines.py, tests/test_bf16.py).
COMPATIBILITY_ROWS = {
    "slice": ({"method": "slice"}, None),
    "slice_per_module": ({"method": "slice", "projection": "per_module"}, None),
    "lora_ga": ({"method": "lora_ga"}, None),
    "loram": ({"method": "loram"}, None),
    "vanilla": ({"method": "vanilla"}, None),
    "olora": ({"method": "vanilla"}, "olora"),
    "keeplora": ({"method": "vanilla"}, "keeplora"),
    "inflora": ({"method": "vanilla"}, "inflora"),
    "eblora": ({"method": "vanilla"}, "eblora"),
    "slao": ({"method": "vanilla"}, "slao"),
}
# a fixed input (1, 8) for the deployed model's logits in those tests
PROBE_IDS = [[5, 17, 42, 99, 3, 250, 7, 64]]


def tiny_llama(seed: int = 0, hidden_size: int = 64, layers: int = 2, vocab_size: int = 260, intermediate: int = 96):
    """A random LlamaForCausalLM (fp32) with q/k/v/o/gate/up/down projections."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    return model.float()


def conflicting_tiny_llama(seed: int = 0):
    """`tiny_llama` whose LM-head row of 'z' is partly opposite to that of 'x': tasks answering
    'x...' and 'z...' have conflicting gradients, so SLICE's surgery acts (as in the paper's
    opposite sequences)."""
    tok = tiny_tokenizer()
    model = tiny_llama(seed=seed)
    x, z = tok.convert_tokens_to_ids(["x", "z"])
    with torch.no_grad():
        w = model.lm_head.weight
        w[z] = -0.6 * w[x] + 0.8 * w[z]
    return model


TINY_RECIPE = """\
model_name_or_path: {model}
dtype: float32
lora_r: 4
lora_alpha: 8
use_rslora: true
lora_dropout: 0.0
lora_target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
tasks:
  - {{name: first, source: builtin, max_train: 16, max_eval: 4}}
  - {{name: last, source: builtin, max_train: 16, max_eval: 4}}
init: {{method: slice, c: 1.0, cur_steps: 1, prev_steps: 1, batch_size: 4, micro_batch_size: 4}}
evaluation: {{max_samples: 4, batch_size: 4, max_new_tokens: 4}}
output_dir: {output_dir}
num_train_epochs: 1
per_device_train_batch_size: 4
learning_rate: {learning_rate}
warmup_steps: 0
max_length: 96
logging_steps: 1
seed: 0
use_cpu: true
disable_tqdm: true
dataloader_num_workers: 0
"""


def tiny_recipe_yaml(model_path, output_dir, learning_rate: str = "1.0e-3", extra: str = "") -> str:
    """A 2-task SLICE recipe (built-in tasks first -> last) for a tiny model saved at
    ``model_path`` (model and tokenizer via save_pretrained); ``extra`` is appended YAML."""
    return TINY_RECIPE.format(model=model_path, output_dir=output_dir, learning_rate=learning_rate) + extra
