"""Scoring a model on the seen tasks (row t of R) and on general benchmarks (GP/IP).

docs/method.md, "Evaluation and metrics". One module per concern:

- `prompts`: the prompt and reference of a record, exactly as TRL's SFTTrainer trains on them;
- `metrics`: exact match and ROUGE-L of a prediction;
- `generation`: batched greedy generation and `evaluate_task` (one entry of R, a `TaskScore`);
- `schedule`: which tasks a stage scores (``evaluation.every``, ``score_upcoming``) and the cost;
- `harness`: everything that touches lm-evaluation-harness (`evaluate_general`, `resolve_tasks`);
- `general`: GP/IP as the paper reports them: its benchmarks, our task files and local-data
  templates (package data next to it), and the base-model comparison (`general.summarize`).
"""

from slice_trl.evaluation import general
from slice_trl.evaluation.generation import TaskScore, evaluate_task, generate, generate_tokens
from slice_trl.evaluation.harness import (
    LMEvalDataError,
    evaluate_general,
    evaluate_general_lm,
    load_task,
    resolve_tasks,
)
from slice_trl.evaluation.metrics import exact_match, normalize_answer, rouge_l, score_predictions
from slice_trl.evaluation.prompts import prompt_token_ids, reference_text, render_prompt
from slice_trl.evaluation.schedule import task_evaluations, tasks_to_score

__all__ = [
    "TaskScore",
    "LMEvalDataError",
    "general",
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
    "load_task",
    "resolve_tasks",
    "tasks_to_score",
    "task_evaluations",
]
