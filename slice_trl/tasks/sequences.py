"""The named task sequences of the continual-learning literature, in one place.

A recipe names one with ``sequence: superni15/order1`` (and ``data_dir`` where its task folders
are) instead of listing ``tasks:``; ``sequence: {name: superni15/order1, max_train: 8, max_eval: 4}``
applies the other keys (any `TaskSpec` field) to every task. ``python -m slice_trl.run
--list-sequences`` prints them all (`describe`). docs/benchmarks.md cites the source of each order.
"""

from __future__ import annotations

from dataclasses import dataclass

from slice_trl.configs.settings import suggest

__all__ = ["Benchmark", "BENCHMARKS", "SEQUENCES", "expand_sequence", "describe"]

SAPT = "github.com/circle-hit/SAPT (CL_Benchmark/{folder}) or github.com/cmnfriend/O-LoRA (CL_Benchmark)"


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its task source, default metric (None: the source's own), where its data comes
    from, the folder of this repository's shared data that holds it (if any) and its orders."""

    name: str
    title: str
    source: str
    metric: str | None
    origin: str
    shared_data: str | None
    orders: dict[str, tuple[str, ...]]


_SNI = {"task1572": "task1572_samsum_summary", "task363": "task363_sst2_polarity_classification",
        "task1290": "task1290_xsum_summarization", "task181": "task181_outcome_extraction",
        "task002": "task002_quoref_answer_generation", "task1510": "task1510_evalution_relation_extraction",
        "task639": "task639_multi_woz_user_utterance_generation", "task1729": "task1729_personachat_generate_next",
        "task073": "task073_commonsenseqa_answer_generation", "task1590": "task1590_diplomacy_text_generation",
        "task748": "task748_glucose_reverse_cause_event_detection",
        "task511": "task511_reddit_tifu_long_text_summarization", "task591": "task591_sciq_answer_generation",
        "task1687": "task1687_sentiment140_classification", "task875": "task875_emotion_classification"}


def _sni(ids: str) -> tuple[str, ...]:
    return tuple(_SNI[f"task{i}"] for i in ids.split())


def _ni(names: str) -> tuple[str, ...]:
    return tuple(f"{n}.json" for n in names.split())


BENCHMARKS = {b.name: b for b in (
    Benchmark("superni15", "SuperNI-15 (SAPT, ACL 2024; Merge-before-Forget)", "cl_benchmark", "sni_rougeL",
              SAPT.format(folder="SuperNI"), "superni15", {
                  "order1": _sni("1572 363 1290 181 002 1510 639 1729 073 1590 748 511 591 1687 875"),
                  "order2": _sni("748 073 1590 639 1572 1687 591 363 1510 1729 181 511 002 1290 875")}),
    Benchmark("long_sequence", "Long Sequence, 15 tasks (O-LoRA, EMNLP 2023; orders of SAPT)", "cl_benchmark",
              "sni_exact_match", SAPT.format(folder="Long_Sequence"),
              "long_sequence (5 of its 15 tasks: cb, copa, wic, boolq, mnli)", {
                  "order3": tuple("mnli cb wic copa qqp boolq rte imdb yelp amazon sst2 dbpedia agnews multirc "
                                  "yahoo".split()),
                  "order4": tuple("yelp amazon mnli cb copa qqp rte imdb sst2 dbpedia agnews yahoo multirc boolq "
                                  "wic".split())}),
    Benchmark("standard_cl", "Standard CL, 4 tasks (O-LoRA's scripts/order_1..3.sh)", "cl_benchmark",
              "sni_exact_match", SAPT.format(folder="Long_Sequence"), None, {
                  "order1": ("dbpedia", "amazon", "yahoo", "agnews"),
                  "order2": ("dbpedia", "amazon", "agnews", "yahoo"),
                  "order3": ("yahoo", "amazon", "agnews", "dbpedia")}),
    Benchmark("trace", "TRACE (six tasks, as the SLICE paper runs it)", "trace", "rougeL",
              "github.com/BeyonderXX/TRACE (LLM-CL-Benchmark_5000)", "trace (FOMC only)", {
                  "order1": ("C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm")}),
    Benchmark("ni_seq", "the SLICE paper's NI sequences (natural-instructions task files)", "superni", None,
              "github.com/allenai/natural-instructions (tasks/)", "superni (Opp2 whole; Opp1, Opp3 without task611)", {
                  "g1": _ni("task618_amazonreview_summary_text_generation task1290_xsum_summarization "
                            "task589_amazonfood_summary_text_generation task511_reddit_tifu_long_text_summarization "
                            "task1357_xlsum_summary_generation"),
                  "g2": _ni("task1355_sent_comp_summarization task141_odd-man-out_classification_category "
                            "task619_ohsumed_abstract_title_generation task163_count_words_ending_with_letter "
                            "task002_quoref_answer_generation"),
                  "opp1": _ni("task088_identify_typo_verification task090_equation_learner_algebra "
                              "task1510_evalution_relation_extraction task363_sst2_polarity_classification "
                              "task611_mutual_multi_turn_dialogue"),
                  "opp2": _ni("task088_identify_typo_verification task1510_evalution_relation_extraction "
                              "task181_outcome_extraction task243_count_elements_in_set_intersection "
                              "task363_sst2_polarity_classification"),
                  "opp3": _ni("task088_identify_typo_verification task1510_evalution_relation_extraction "
                              "task243_count_elements_in_set_intersection task363_sst2_polarity_classification "
                              "task611_mutual_multi_turn_dialogue")}),
)}

SEQUENCES = {f"{b.name}/{order}": (b, order) for b in BENCHMARKS.values() for order in b.orders}


def lookup(name) -> tuple[Benchmark, str]:
    """(benchmark, order) of ``name`` such as "superni15/order1"; ValueError (one line, with a
    suggestion) for an unknown benchmark or an order it does not have."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"sequence={name!r} must be a name such as 'superni15/order1'; see --list-sequences.")
    bench, _, order = name.partition("/")
    if bench not in BENCHMARKS:
        raise ValueError(f"sequence={name!r} is unknown.{suggest(name, SEQUENCES)} Known: {sorted(SEQUENCES)} "
                         "(python -m slice_trl.run --list-sequences).")
    orders = BENCHMARKS[bench].orders
    if order not in orders:
        known = [f"{bench}/{o}" for o in orders]
        raise ValueError(f"sequence={name!r}: {bench} has no order {order!r}.{suggest(name, known)} "
                         f"Its orders: {known}.")
    return BENCHMARKS[bench], order


def expand_sequence(sequence) -> list[dict]:
    """The ``tasks:`` entries of a ``sequence:`` value (a name, or a mapping with ``name`` and TaskSpec
    fields applied to every task). Paths are task folders / files relative to the recipe's data_dir."""
    extra = {}
    if isinstance(sequence, dict):
        extra = dict(sequence)
        sequence = extra.pop("name", None)
    bench, order = lookup(sequence)
    entries = []
    for task in bench.orders[order]:
        entry = {"source": bench.source, "path": task, "origin": bench.origin}
        if bench.metric is not None:
            entry["metric"] = bench.metric
        if bench.source == "cl_benchmark":
            entry["max_eval"] = None  # the benchmark's whole test split unless capped
        entries.append({**entry, **extra})
    return entries


def describe() -> str:
    """``--list-sequences``: every name, its tasks and where its data comes from."""
    lines = []
    for b in BENCHMARKS.values():
        metric = b.metric or "per task (docs/method.md)"
        shared = f"; on this repository's shared data: ../shared/data/{b.shared_data}" if b.shared_data else ""
        lines.append(f"{b.name}: {b.title}. Source {b.source}, metric {metric}. Data: {b.origin}{shared}")
        for order, tasks in b.orders.items():
            lines.append(f"  {b.name}/{order} ({len(tasks)} tasks): {', '.join(tasks)}")
    return "\n".join(lines)
