"""Run by .ci/wheel_check with the fresh virtual environment's python, from a folder outside the
checkout: checks that slice_trl (and its card templates) come from the installed wheel, renders a
model card and pushes a finished one-stage run to a strict loopback Hub."""

import os
import sys
from pathlib import Path

# The loopback Hub is a test utility, not part of the wheel: import only that module from tests/,
# and start it before huggingface_hub is imported (it reads HF_ENDPOINT once, at import).
sys.path.insert(0, os.environ["SLICE_TRL_TEST_HUB_DIR"])
from hub_server import HubServer  # noqa: E402

sys.path.pop(0)
TOKEN = "hf_slice_trl_CI_wheel_token_5e2a7c1d9b"
server = HubServer(token=TOKEN, strict=True).start()
os.environ.update(HF_ENDPOINT=server.url, HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
                  HF_HOME=str(Path.cwd() / "hf_home"))

import json  # noqa: E402

import torch  # noqa: E402
from importlib import resources  # noqa: E402

import slice_trl  # noqa: E402
from slice_trl import hub  # noqa: E402
from slice_trl.utils.testing import tiny_llama  # noqa: E402

checkout = Path(os.environ["SLICE_TRL_TEST_HUB_DIR"]).resolve().parent
package = Path(slice_trl.__file__).resolve().parent
template = Path(str(resources.files("slice_trl").joinpath("model_cards", "continual_run.md")))
assert Path(sys.prefix) in package.parents, f"slice_trl comes from {package}, not the wheel in {sys.prefix}"
assert checkout not in package.parents and template.is_file() and Path(sys.prefix) in template.parents, template
print(f"slice_trl from the wheel: {package}")

# a finished one-stage run in the trainer's layout (plain PEFT; the push converts the adapter)
from peft import LoraConfig, get_peft_model  # noqa: E402

out = Path.cwd() / "run"
stage = out / "stages" / "01-only"
model = get_peft_model(tiny_llama(seed=0), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
model.save_pretrained(stage / "init_adapter")
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.add_(0.01)
model.save_pretrained(stage / "adapter")
(stage / "record.json").write_text(json.dumps({"stage": 1, "task": "only"}))
(out / "run.json").write_text(json.dumps({"base_model": "smollm2-135m-instruct", "task_names": ["only"], "seed": 0,
                                          "lora": {"r": 2, "target_modules": "{'v_proj', 'q_proj'}"}}))
(out / "results.json").write_text(json.dumps({"task_names": ["only"], "R": [[0.5]], "AP": 0.5, "FP": 0.5,
                                              "forgetting": 0.0}))

card = hub.render_model_card(out, "tester/wheel-run", {1: "stage-01-only"})
assert card.data.license == "apache-2.0" and "dequantised GGUF" in card.text and "| AP | 50.0 |" in card.text
report = hub.push_pending(out, "tester/wheel-run")
assert report.ok and report.pushed == [1], str(report)
files = server.list_files("tester/wheel-run")
assert {"README.md", "run.json", "stage-01-only/adapter_model.safetensors"} <= set(files), files
assert "q_proj, v_proj" in server.read_file("tester/wheel-run", "README.md").decode()
assert hub.push_pending(out, "tester/wheel-run").up_to_date == [1]
server.stop()
print(f"wheel install: rendered a card and pushed {report.pushed} -> {files}")
