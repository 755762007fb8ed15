"""Shared helpers of the careless-and-hostile-recipe tests (issue 27): the tiny valid recipe with one
thing changed, run through `slice_trl.run.main` in-process.

Exit codes of ``python -m slice_trl.run RECIPE --dry-run`` (README, "What a recipe can do"):
0 every check made and passed, 2 refused, 3 passed but some checks could not be made here (each
named on its own line)."""

from __future__ import annotations

import re
from pathlib import Path

from slice_trl import run as run_mod
from slice_trl.utils.testing import tiny_llama, tiny_recipe_yaml, tiny_tokenizer


def save_tiny_base(folder: Path) -> Path:
    base = folder / "tiny-llama"
    tiny_llama(seed=3).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    return base


def set_key(text: str, key: str, value: str | None) -> str:
    """The tiny recipe with top-level ``key`` set to the raw YAML ``value`` (None: the line removed)."""
    lines = text.splitlines()
    hit = [i for i, line in enumerate(lines) if re.match(rf"{re.escape(key)}:", line)]
    new = [] if value is None else [f"{key}: {value}"]
    if hit:
        lines[hit[0]:hit[0] + 1] = new
    else:
        lines += new
    return "\n".join(lines) + "\n"


def write_recipe(tmp_path: Path, tiny_base: Path, edits: dict | None = None, extra: str = "", raw: str | None = None) -> Path:
    text = raw if raw is not None else tiny_recipe_yaml(tiny_base, tmp_path / "out")
    for k, v in (edits or {}).items():
        text = set_key(text, k, v)
    path = tmp_path / "recipe.yaml"
    path.write_text(text + extra)
    return path


def dry_run(capsys, recipe, *overrides) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run_mod.main([str(recipe), "--dry-run", *map(str, overrides)])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def refused(code: int, err: str, needles) -> None:
    assert code == 2, f"exit {code}, stderr {err!r}"
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


