"""Per-example metrics of seen tasks: exact match (classification-like tasks) and ROUGE-L
(generation tasks; also the Alpaca GP/IP benchmark's metric), each a score in [0, 1]; and the
scorer of the continual benchmarks SuperNI-15, Long Sequence and Standard CL as their authors run
it (``sni_exact_match``, ``sni_rougeL``: Super-NaturalInstructions' ``compute_metrics.py``, copied
by O-LoRA and SAPT; docs/benchmarks.md lists where it differs from ours).

Each scorer registers itself by name in `slice_trl.utils.registry.metrics` (``@metrics.register("rougeL")``);
a task's ``metric:`` is checked against that registry, and a package of your own adds a scorer through
the ``slice_trl.metrics`` entry point group."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from slice_trl.utils.registry import metrics

__all__ = ["normalize_answer", "exact_match", "rouge_l", "score_predictions", "sni_normalize",
           "sni_exact_match", "sni_rouge_l"]

def normalize_answer(text: str) -> str:
    """Lower-case, strip, and collapse every run of whitespace to one space."""
    return " ".join(str(text).lower().split())


@metrics.register("exact_match")
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


@metrics.register("rougeL")
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


_PUNCTUATION = set(string.punctuation)


def sni_normalize(text: str) -> str:
    """The benchmarks' answer normalisation (SQuAD v1.1's without removing articles): lower-case,
    drop every ASCII punctuation character, collapse whitespace."""
    return " ".join("".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION).split())


@metrics.register("sni_exact_match")
def sni_exact_match(pred: str, ref: str) -> float:
    """1.0 when `sni_normalize` of the prediction equals that of the reference (a label), else 0.0."""
    return float(sni_normalize(pred) == sni_normalize(ref))


_SNI_SCORER = None


@metrics.register("sni_rougeL")
def sni_rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure as the benchmarks score it: rouge_score's default tokenizer (lower-case,
    ``[a-z0-9]`` words) with the Porter stemmer (``use_stemmer=True``), on the raw texts."""
    global _SNI_SCORER
    if _SNI_SCORER is None:
        from rouge_score import rouge_scorer

        _SNI_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_SNI_SCORER.score(ref, pred)["rougeL"].fmeasure)


def score_predictions(predictions: Sequence[str], references: Sequence[str], metric: str) -> list[float]:
    """Per-example scores in [0, 1] with the registered scorer named ``metric`` (e.g. "exact_match",
    "rougeL")."""
    fn = metrics.get(metric).obj
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    return [fn(p, r) for p, r in zip(predictions, references)]
