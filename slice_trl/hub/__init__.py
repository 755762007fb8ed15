"""Publishing a continual run to the Hugging Face Hub, and loading its stages back.

A model repo holds one commit per finished stage and a final one with GP/IP: the run's files as
public copies (no secrets, no local paths), one ``stage-NN-<task>/`` folder per stage with the
adapter for the original base and the stage's record, and the model card
(``model_cards/continual_run.md``: licence, model-index, scores x100). Where each file lives,
locally and on the Hub, is `slice_trl.utils.run_folder`'s.

Stage k's adapter applies to the base model with stages 1..k-1 merged in: `load_stage` does that.
The modules here hold:

- `convert`: the adapter for the original base; `files`: the public copies of the run's files;
  `redaction`: no tokens, no local paths;
- `card`: the model card; `push`: commits (`push_pending`, `push_stage`, `PushReport`);
  `splits`: the task splits dataset; `load`: `load_stage`, `list_run`, `pull`;
- ``python -m slice_trl.hub ls REPO`` / ``pull REPO --stage K [--merge OUT]``.

Tokens: every function takes ``token=None``, which lets huggingface_hub resolve it (``HF_TOKEN``,
then the login cache). The token is only ever passed to huggingface_hub; it is never written to a
file, a card or a log message.
"""

from slice_trl.hub.card import render_model_card
from slice_trl.hub.convert import convert_adapter_files, published_adapter_dir
from slice_trl.hub.load import download_run_records, list_run, load_stage, pull
from slice_trl.hub.push import PushReport, push_pending, push_pending_in_background, push_stage
from slice_trl.hub.splits import push_pending_splits, push_task_splits, save_pending_splits

__all__ = [
    "PushReport",
    "convert_adapter_files",
    "download_run_records",
    "list_run",
    "load_stage",
    "pull",
    "published_adapter_dir",
    "push_pending",
    "push_pending_in_background",
    "push_pending_splits",
    "push_stage",
    "push_task_splits",
    "render_model_card",
    "save_pending_splits",
]
