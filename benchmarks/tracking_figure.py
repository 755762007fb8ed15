"""Draw what TensorBoard shows for a continual run, from the run's own event files.

    python benchmarks/tracking_figure.py RUN_DIR [OUT.png]

RUN_DIR is a run's output_dir trained with ``report_to: tensorboard`` (its TensorBoard log dir is
``run.json`` -> ``tracking.tensorboard_dir``). The event files are read with tensorboard's
EventAccumulator and drawn with matplotlib in four panels on the run's one step axis: the training
loss (stages shaded), every task's score ``eval/<task>`` (step 0: the base model, R_0), AP / FP /
forgetting after each stage, and the SLICE gate (``train/init/cosine``, ``gamma``) at the step each
stage starts from. Default output: benchmarks/results/tracking_quickstart_tensorboard.png (the
README's "Tracking" picture: a matplotlib rendering of the event data, not a browser screenshot).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "tracking_quickstart_tensorboard.png"


def read(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = run_dir / json.loads((run_dir / "run.json").read_text())["tracking"]["tensorboard_dir"]
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def draw(run_dir: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = read(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    tasks = run["task_names"]
    ends = [step for step, _ in s["eval/AP"]]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax in axes.flat:
        start = 0
        for k, end in enumerate(ends):
            ax.axvspan(start, end, color="0.93" if k % 2 else "white", zorder=0)
            start = end
        ax.set_xlabel("step (one axis for the whole sequence)")
        ax.grid(alpha=0.3)
    ax = axes[0, 0]
    ax.plot(*zip(*s["train/loss"]), lw=1)
    ax.set_title("train/loss (stages: white, grey, white, ...)")
    ax = axes[0, 1]
    for name in tasks:
        ax.plot(*zip(*[(x, 100 * y) for x, y in s[f"eval/{name}"]]), marker="o", label=f"eval/{name}")
    ax.set_title("eval/<task> (x100; step 0: the base model)")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    for key in ("AP", "FP", "forgetting"):
        ax.plot(*zip(*[(x, 100 * y) for x, y in s[f"eval/{key}"]]), marker="o", label=f"eval/{key}")
    ax.set_title("AP / FP / forgetting after each stage (x100)")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    if "train/init/cosine" in s:  # SLICE only (from stage 2: it needs an earlier task)
        ax.plot(*zip(*s["train/init/cosine"]), marker="s", ls="--", color="C0", label="train/init/cosine")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("cosine(G_cur, G_prev)", color="C0")
    twin = ax.twinx()  # gamma has its own scale (it grows as ||G_prev|| shrinks)
    twin.plot(*zip(*s["train/init/gamma"]), marker="^", ls=":", color="C3", label="train/init/gamma")
    twin.set_ylabel("gamma", color="C3")
    for step, fired in s["train/init/fired"]:
        ax.annotate("fired" if fired else "not fired", (step, -0.95), fontsize=8, ha="center")
    ax.set_title("SLICE gate at each stage's start (train/init/...)")
    fig.suptitle(f"TensorBoard scalars of a quickstart run ({run['init']['method']}), rendered from its event files")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    draw(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else OUT)
