"""slice_trl.evaluation: prompts exactly as TRL trains on them, metrics on hand cases, batched
left-padded greedy generation against one-at-a-time generation, task scoring through a scripted
model, and GP/IP through lm-evaluation-harness on a local task."""

import json
import re
import sys

import pytest
import torch
from datasets import Dataset
from transformers import GenerationConfig

from slice_trl.configs.config import EvalConfig
from slice_trl.evaluation import (
    LMEvalDataError,
    evaluate_general,
    evaluate_task,
    exact_match,
    generate,
    generate_tokens,
    normalize_answer,
    prompt_token_ids,
    reference_text,
    render_prompt,
    rouge_l,
)
from slice_trl.tasks.base import Task
from slice_trl.utils.testing import SPECIAL_TOKENS, tiny_llama, tiny_tokenizer

EOS = 2  # <|im_end|> in tiny_tokenizer()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run several times faster on one thread than on threads fighting over a
    shared CPU; restored afterwards for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def chat(prompt, answer=None, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    row = {"prompt": messages}
    if answer is not None:
        row["completion"] = [{"role": "assistant", "content": answer}]
    return row


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def test_normalize_and_exact_match_hand_cases():
    assert normalize_answer("  Hello \n\t World  ") == "hello world"
    assert exact_match("Positive", "positive") == 1.0
    assert exact_match(" yes\n", "YES") == 1.0
    assert exact_match("a  b", "a b") == 1.0  # whitespace runs collapse
    assert exact_match("yes.", "yes") == 0.0  # punctuation is kept
    assert exact_match("", "") == 1.0
    assert exact_match("no", "yes") == 0.0


def test_rouge_l_hand_cases():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat": 5 of 6 each way
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # P = 2/4, R = 2/2 -> F = 2PR/(P+R) = 2/3
    assert rouge_l("a b c d", "a c") == pytest.approx(2 / 3)
    assert rouge_l("Hello, World!", "hello world") == pytest.approx(1.0)  # case and punctuation ignored
    assert rouge_l("alpha beta", "gamma delta") == 0.0
    assert rouge_l("", "something") == 0.0
    # CJK is one token per character (rouge_score's default tokenizer would drop it all): LCS 3 of 4
    assert rouge_l("我喜欢猫", "我喜欢狗") == pytest.approx(3 / 4)
    assert rouge_l("café au lait", "café noir") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_reference_text():
    assert reference_text({"prompt": "p", "completion": " yes"}) == " yes"
    assert reference_text(chat("q", "the answer")) == "the answer"
    parts = {"prompt": [], "completion": [{"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                                           {"type": "text", "text": "b"}]}]}
    assert reference_text(parts) == "ab"


# ---------------------------------------------------------------------------------------------
# Prompts: the prefix TRL's SFTTrainer trains the completion on
# ---------------------------------------------------------------------------------------------

def bos_tokenizer():
    """tiny_tokenizer() whose post-processor prepends a BOS (<|endoftext|>) to plain strings, as
    Llama tokenizers do: TRL tokenizes string prompts WITH special tokens."""
    from tokenizers import processors

    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 3)])
    tok.bos_token = "<|endoftext|>"
    return tok


def merging_tokenizer():
    """Byte-level BPE like tiny_tokenizer() plus one merge, "Ġ" + "y" -> "Ġy": a prompt ending in a
    space followed by a completion starting with "y" tokenizes differently together."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    vocab["Ġy"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "y")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>", "<|endoftext|>"])
    tok.chat_template = tiny_tokenizer().chat_template
    return tok


@pytest.fixture(scope="module")
def sft_trainer(tmp_path_factory):
    """A real trl.SFTTrainer; its _prepare_dataset is TRL's own tokenisation."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path_factory.mktemp("sft")), use_cpu=True, bf16=False, report_to="none",
                     max_length=None, disable_tqdm=True)
    train = Dataset.from_list([{"prompt": "a", "completion": "b"}])
    return SFTTrainer(model=tiny_llama(), args=args, train_dataset=train, processing_class=tiny_tokenizer())


def trl_prefix(trainer, example, tokenizer):
    """Ids before the first trained (label != -100) token, from TRL's dataset preparation."""
    prepared = trainer._prepare_dataset(Dataset.from_list([example]), tokenizer, trainer.args, False, None, "eval")
    row = prepared[0]
    first = next(k for k, label in enumerate(row["labels"]) if label != -100)
    return row["input_ids"][:first]


CASES = {
    # name: (tokenizer factory, example, the prompt text written out by hand)
    "string": (tiny_tokenizer, {"prompt": "Q: 2+2?\nA:", "completion": " 4"}, "Q: 2+2?\nA:"),
    "string_bos": (bos_tokenizer, {"prompt": "Q: hi\nA:", "completion": " yes"}, "<|endoftext|>Q: hi\nA:"),
    "conversational": (tiny_tokenizer, chat("hi there", "yes", system="be brief"),
                       "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi there<|im_end|>\n"
                       "<|im_start|>assistant\n"),
    # TRL's completion starts where prompt and prompt+completion ids diverge: the trailing space
    # merged into "Ġy", so the training context ends at ":".
    "boundary_merge": (merging_tokenizer, {"prompt": "Answer: ", "completion": "yes"}, "Answer:"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_prompt_is_the_prefix_trl_trains_on(sft_trainer, case):
    make_tok, example, expected_text = CASES[case]
    tok = make_tok()
    prefix = trl_prefix(sft_trainer, example, tok)
    assert prompt_token_ids(example, tok) == prefix
    text = render_prompt(example, tok)
    assert text == expected_text
    assert tok(text, add_special_tokens=False)["input_ids"] == prefix


def test_string_completion_gets_eos_like_trl(sft_trainer):
    """An empty string completion is EOS alone in TRL; the prompt prefix is then the whole prompt."""
    tok = tiny_tokenizer()
    example = {"prompt": "xyz", "completion": ""}
    assert prompt_token_ids(example, tok) == trl_prefix(sft_trainer, example, tok) == tok("xyz")["input_ids"]


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------

PROMPTS = ["a", "hello world, how are", "Q: 2+2?\nA:", "xyz " * 9, "abc"]


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=3)


def test_batched_left_padded_generation_equals_one_at_a_time(model):
    tok = tiny_tokenizer()
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    model.train()  # generation must switch to eval and back
    batched = generate_tokens(model, tok, prompts, batch_size=4, max_new_tokens=6, max_input_tokens=64)
    single = [generate_tokens(model, tok, [p], batch_size=1, max_new_tokens=6, max_input_tokens=64)[0]
              for p in prompts]
    assert batched == single
    assert all(0 < len(t) <= 6 for t in batched)
    assert model.training and all(m.training for m in model.modules())
    assert tok.padding_side == tiny_tokenizer().padding_side
    # strings are the same prompts; the decoded predictions are the decoded tokens
    assert generate(model, tok, PROMPTS, batch_size=4, max_new_tokens=6) == \
        [tok.decode(t, skip_special_tokens=True) for t in batched]


def test_generation_on_peft_model_with_fresh_lora_equals_base(model):
    """A fresh LoRA adapter (B = 0) does not change the function: same greedy tokens."""
    from peft import LoraConfig, get_peft_model

    tok = tiny_tokenizer()
    base = generate_tokens(model, tok, PROMPTS, batch_size=3, max_new_tokens=5)
    peft_model = get_peft_model(tiny_llama(seed=3), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.eval()
    assert generate_tokens(peft_model, tok, PROMPTS, batch_size=3, max_new_tokens=5) == base
    assert not peft_model.training


def xy_model(tok):
    """A tiny Llama whose output layer only scores "x" (+u) and "y" (-u): every generated token is
    x or y, never a prompt character nor EOS."""
    m = tiny_llama(seed=5)
    x, y = tok.convert_tokens_to_ids("x"), tok.convert_tokens_to_ids("y")
    with torch.no_grad():
        u = torch.randn(m.lm_head.weight.shape[1], generator=torch.Generator().manual_seed(0))
        m.lm_head.weight.zero_()
        m.lm_head.weight[x] = u
        m.lm_head.weight[y] = -u
    return m


def test_prediction_never_contains_prompt_tokens():
    """Cutting at attention_mask.sum() (the reference's bug) would glue the end of each padded
    prompt (letters a-h) to its prediction; cut at the padded length, predictions are x/y only."""
    tok = tiny_tokenizer()
    prompts = ["ab", "abcdefgh" * 3, "hgf", "abcabcabcabc", "e"]
    preds = generate(xy_model(tok), tok, prompts, batch_size=5, max_new_tokens=7)
    assert all(re.fullmatch(r"[xy]{7}", p) for p in preds), preds


def test_long_prompts_are_cut_from_the_left(model):
    tok = tiny_tokenizer()
    long = tok("0123456789 the end:", add_special_tokens=False)["input_ids"]
    cut = generate_tokens(model, tok, [long], max_new_tokens=5, max_input_tokens=6)
    assert cut == generate_tokens(model, tok, [long[-6:]], max_new_tokens=5, max_input_tokens=100)
    # a leading BOS survives the cut
    bos = bos_tokenizer()
    with_bos = bos("0123456789 the end:")["input_ids"]
    assert with_bos[0] == bos.bos_token_id
    assert generate_tokens(model, bos, [with_bos], max_new_tokens=5, max_input_tokens=6) == \
        generate_tokens(model, bos, [[with_bos[0]] + with_bos[-5:]], max_new_tokens=5, max_input_tokens=100)


class ScriptedModel(torch.nn.Module):
    """Answers each prompt with a scripted text then EOS, and records the batches it is given:
    a stand-in whose predictions are known, to check the plumbing around generate()."""

    def __init__(self, tok, answers: dict[str, str]):
        super().__init__()
        self.tok = tok
        self.answers = {tuple(tok(p, add_special_tokens=False)["input_ids"]): a for p, a in answers.items()}
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = GenerationConfig()
        self.seen = []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **kwargs):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            n_pad = mask.index(1)
            assert mask == [0] * n_pad + [1] * (len(mask) - n_pad), "not left-padded"
            prompt = tuple(ids[n_pad:])
            self.seen.append(prompt)
            rows.append(self.tok(self.answers[prompt], add_special_tokens=False)["input_ids"] + [EOS])
        width = min(max_new_tokens, max(map(len, rows)))
        new = torch.tensor([(r + [pad_token_id] * width)[:width] for r in rows])
        return torch.cat([input_ids, new], dim=1)


def test_evaluate_task_scores_first_max_samples():
    tok = tiny_tokenizer()
    rows = [chat("q0", "yes"), chat("q1", "Yes"), chat("q2", "no"), chat("q3", "yes")]
    rendered = [render_prompt(r, tok) for r in rows]
    scripted = ScriptedModel(tok, dict(zip(rendered, ["yes", " YES\n", "yes", "yes"])))
    task = Task("t", Dataset.from_list(rows), Dataset.from_list(rows), "exact_match")
    score = evaluate_task(scripted, tok, task, EvalConfig(max_samples=3, batch_size=2, max_new_tokens=8))
    assert score.score == pytest.approx(2 / 3)  # q0 exact, q1 after normalisation, q2 wrong
    assert (score.task, score.metric, score.n) == ("t", "exact_match", 3)
    assert len(scripted.seen) == 3 and tuple(tok(rendered[3], add_special_tokens=False)["input_ids"]) \
        not in scripted.seen
    assert score.samples[0] == {"prompt": rendered[0], "prediction": "yes", "reference": "yes"}
    # every scored example is kept, with its position in the held-out split and its own score
    assert score.predictions == [{"i": 0, "prediction": "yes", "reference": "yes", "score": 1.0},
                                 {"i": 1, "prediction": " YES\n", "reference": "Yes", "score": 1.0},
                                 {"i": 2, "prediction": "yes", "reference": "no", "score": 0.0}]
    json.dumps(score.to_dict())


def test_evaluate_task_rouge_l():
    tok = tiny_tokenizer()
    rows = [{"prompt": "Describe:", "completion": " the cat is on the mat"},
            {"prompt": "Other:", "completion": " alpha beta"}]
    scripted = ScriptedModel(tok, {"Describe:": "the cat sat on the mat", "Other:": "alpha beta"})
    task = Task("g", Dataset.from_list(rows), Dataset.from_list(rows), "rougeL")
    score = evaluate_task(scripted, tok, task, EvalConfig(max_samples=10, batch_size=2, max_new_tokens=32))
    assert score.n == 2
    assert score.score == pytest.approx((5 / 6 + 1.0) / 2)


# ---------------------------------------------------------------------------------------------
# GP / IP through lm-evaluation-harness (a local multiple-choice task)
# ---------------------------------------------------------------------------------------------

DOCS = [{"q": "The sky is", "choices": ["blue", "green", "loud"], "label": 0},
        {"q": "Grass is", "choices": ["red", "green", "fast"], "label": 1},
        {"q": "Snow is", "choices": ["white", "black", "sour"], "label": 0},
        {"q": "Fire is", "choices": ["cold", "quiet", "hot"], "label": 2},
        {"q": "Ice is", "choices": ["warm", "cold", "round"], "label": 1}]


def write_task(directory, name, data_file, extra=""):
    (directory / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data_file}\n"
        "test_split: test\n"
        "fewshot_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n" + extra)


def zero_shot_by_hand(model, tok, docs):
    """acc and acc_norm computed directly: argmax over choices of sum log p(" " + choice | q)
    (acc_norm divides by the choice's length in characters)."""
    acc = acc_norm = 0
    with torch.no_grad():
        for doc in docs:
            ctx = tok(doc["q"], add_special_tokens=False)["input_ids"]
            lls = []
            for choice in doc["choices"]:
                cont = tok(" " + choice, add_special_tokens=False)["input_ids"]
                logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
                lls.append(sum(logp[len(ctx) + k - 1, t].item() for k, t in enumerate(cont)))
            acc += max(range(len(lls)), key=lls.__getitem__) == doc["label"]
            normed = [ll / len(c) for ll, c in zip(lls, doc["choices"])]
            acc_norm += max(range(len(normed)), key=normed.__getitem__) == doc["label"]
    return acc / len(docs), acc_norm / len(docs)


def test_gp_ip_on_local_lm_eval_task(tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    write_task(tmp_path, "slice_tiny_mc", data)
    cfg = EvalConfig(batch_size=4, lm_eval_tasks=["slice_tiny_mc"], lm_eval_include_path=str(tmp_path),
                     lm_eval_num_fewshot=2, lm_eval_limit=4)
    model, tok = tiny_llama(seed=7), tiny_tokenizer()
    model.train()
    out = evaluate_general(model, tok, cfg)
    assert model.training  # HFLM puts the model in eval mode; it is restored
    zero, few = out["zero_shot"]["slice_tiny_mc"], out["few_shot"]["slice_tiny_mc"]
    assert zero["metric"] == few["metric"] == "acc_norm,none"  # docs/method.md's HellaSwag-style primary metric
    assert (zero["num_fewshot"], few["num_fewshot"]) == (0, 2)
    assert zero["n"] == few["n"] == 4
    assert out["GP"] == zero["score"] and out["IP"] == few["score"]
    assert all(0.0 <= v <= 1.0 for v in (out["GP"], out["IP"]))
    assert out["tasks"] == ["slice_tiny_mc"] and out["limit"] == 4
    _, acc_norm = zero_shot_by_hand(model, tok, DOCS[:4])
    assert zero["score"] == pytest.approx(acc_norm)
    json.dumps(out)


@pytest.mark.parametrize("where", ["missing_file", "hub"])
def test_unreachable_lm_eval_data_names_the_task_and_the_local_yaml(tmp_path, where):
    write_task(tmp_path, "slice_unreachable", tmp_path / "nope.jsonl")
    if where == "hub":  # a Hub dataset the (test) Hub does not have, as offline built-in tasks fail
        yaml = tmp_path / "slice_unreachable.yaml"
        text = yaml.read_text().replace("dataset_path: json", "dataset_path: slice-trl-tests/no-such-dataset")
        yaml.write_text(re.sub(r"dataset_kwargs:\n  data_files:\n    test: .*\n", "", text))
    cfg = EvalConfig(lm_eval_tasks=["slice_unreachable"], lm_eval_include_path=str(tmp_path))
    with pytest.raises(LMEvalDataError, match=r"(?s)'slice_unreachable'.*dataset_path: json"):
        evaluate_general(tiny_llama(), tiny_tokenizer(), cfg)


def test_unknown_lm_eval_task_is_a_clear_error(tmp_path):
    from lm_eval.tasks import TaskManager

    from slice_trl.evaluation import load_task

    # built-in tasks are left out only to keep the test fast (indexing them takes ~30 s)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    with pytest.raises(ValueError, match=r"(?s)'no_such_task_xyz' is not a built-in task.*data_files"):
        load_task(manager, "no_such_task_xyz")


def test_missing_lm_eval_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(ImportError, match=re.escape("pip install 'slice-trl[eval]'")):
        evaluate_general(tiny_llama(), tiny_tokenizer(), EvalConfig(lm_eval_tasks=["x"]))


def test_eval_config_lm_eval_fields():
    cfg = EvalConfig(lm_eval_tasks=["a", "bbh"], lm_eval_fewshot_overrides={"bbh": 3}, lm_eval_metrics={"a": "acc"})
    assert cfg.lm_eval_fewshot_overrides == {"bbh": 3}
    with pytest.raises(ValueError, match="not in lm_eval_tasks"):
        EvalConfig(lm_eval_tasks=["a"], lm_eval_fewshot_overrides={"b": 3})
    with pytest.raises(ValueError, match=">= 0"):
        EvalConfig(lm_eval_tasks=["a"], lm_eval_fewshot_overrides={"a": -1})
    assert EvalConfig.from_dict({"lm_eval_tasks": "hellaswag"}).lm_eval_tasks == ["hellaswag"]


def test_every_metric_a_task_accepts_scores_and_an_unknown_one_is_refused():
    # a task accepts exactly the registered scorers; each scores a prediction equal to its reference 1
    # and a disjoint one 0 (true of exact match and ROUGE-L alike)
    from datasets import Dataset

    from slice_trl.evaluation.metrics import score_predictions
    from slice_trl.tasks.base import Task
    from slice_trl.utils.registry import metrics

    rows = Dataset.from_list([{"prompt": "p", "completion": "c"}])
    assert {"exact_match", "rougeL", "sni_exact_match", "sni_rougeL"} <= set(metrics.names())
    for name in metrics.names():
        assert Task("t", rows, rows, metric=name).metric == name
        assert score_predictions(["The cat sat", "dog"], ["the cat sat", "bird"], name) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"Task 't': metric='rouge' is unknown.*Did you mean 'rougeL'"):
        Task("t", rows, rows, metric="rouge")
    with pytest.raises(ValueError, match=r"metric='bleu' is unknown"):
        score_predictions(["a"], ["a"], "bleu")
