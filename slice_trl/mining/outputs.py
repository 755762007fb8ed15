"""What mining writes besides tables: the cosine heatmap (`plot_heatmap`) and the recipe of a
mined sequence (`recipe_dict`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slice_trl.mining.pool import Pool


def _axis_labels(names: Sequence[str]) -> list[str]:
    """Short Super-NI ids (``task088``) when they are unique in the pool, else the full names."""
    import re

    short = [m.group(1) if (m := re.match(r"^(task\d+)_", n)) else n for n in names]
    return short if len(set(short)) == len(short) else list(names)


def plot_heatmap(cos: np.ndarray, names: Sequence[str], path: str | Path, highlight: Sequence[str] = (),
                 title: str = "") -> Path:
    """Cosine heatmap (diverging colour map centred at 0, diagonal masked); the names in
    ``highlight`` (the best subset) are drawn in bold red. The figure grows with the number of
    tasks and the label length so cells stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = len(names)
    labels = _axis_labels(names)
    shown = np.ma.masked_array(cos, mask=np.eye(m, dtype=bool))
    off = cos[~np.eye(m, dtype=bool)]
    lim = float(np.abs(off).max()) if off.size and np.abs(off).max() > 0 else 1.0
    cell = 0.5 if m <= 16 else 0.28  # inches; annotated cells need room for "+0.00"
    font = 8 if m <= 30 else 6
    label_in = 0.075 * (font / 8) * max(len(lab) for lab in labels) + 0.3
    fig, ax = plt.subplots(figsize=(label_in + m * cell + 1.6, label_in + m * cell + 0.9), layout="constrained")
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#dddddd")  # masked diagonal in grey
    im = ax.imshow(shown, cmap=cmap, vmin=-lim, vmax=lim)
    ax.set_xticks(range(m), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(m), labels, fontsize=font)
    marked = {lab for lab, name in zip(labels, names) if name in set(highlight)}
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        for tick in ticks:
            if tick.get_text() in marked:
                tick.set_color("#b2182b")
                tick.set_fontweight("bold")
    if m <= 16:
        for i in range(m):
            for j in range(m):
                if i != j:
                    ax.text(j, i, f"{cos[i, j]:+.2f}", ha="center", va="center", fontsize=6.5,
                            color="white" if abs(cos[i, j]) > 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="gradient cosine")
    ax.set_title(title, fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def recipe_dict(pool: Pool, ordered_names: Sequence[str]) -> dict:
    """The recipe of a mined sequence: the pool's model, the tasks' specs in training order and
    SLICE initialisation."""
    by_name = {t["name"]: t for t in pool.tasks}
    return {
        "model_name_or_path": pool.model,
        "tasks": [dict(by_name[n]) for n in ordered_names],
        "init": {"method": "slice"},
    }
