"""slice_trl.evaluation.results: AP/FP/forgetting against hand-computed values, lower-triangular
enforcement, JSON round-trip, atomic writes, the heatmap and the text table."""

import json
import os
import struct
import sys

import matplotlib.image
import pytest

from slice_trl.evaluation.results import ResultsMatrix
from slice_trl.utils.jsonio import write_json_atomic

NAMES = ["task088", "task1510", "task181"]
# R[i][j] = score on task j after training through task i
ROWS = [[0.9], [0.6, 0.8], [0.3, 0.5, 0.7]]


def filled(n_rows=3):
    r = ResultsMatrix(NAMES)
    for i in range(n_rows):
        r.set_row(i, ROWS[i])
    return r


def test_metrics_on_hand_computed_3x3():
    r = filled()
    # AP = (0.9 + 0.8 + 0.7) / 3 = 0.8; FP = (0.3 + 0.5 + 0.7) / 3 = 0.5; Fgt = 0.3
    assert r.ap() == pytest.approx(0.8)
    assert r.fp() == pytest.approx(0.5)
    assert r.forgetting() == pytest.approx(0.3)
    # per task: best earlier score minus final score; task181 has no earlier score
    assert r.per_task_forgetting() == pytest.approx({"task088": 0.9 - 0.3, "task1510": 0.8 - 0.5})
    assert r.completed == 3


def test_metrics_on_the_completed_prefix():
    r = filled(2)
    # after stage 2: AP = (0.9 + 0.8) / 2, FP = (0.6 + 0.8) / 2
    assert r.ap() == pytest.approx(0.85)
    assert r.fp() == pytest.approx(0.7)
    assert r.forgetting() == pytest.approx(0.15)
    assert r.per_task_forgetting() == pytest.approx({"task088": 0.3})
    one = filled(1)
    assert (one.ap(), one.fp(), one.forgetting(), one.per_task_forgetting()) == (0.9, 0.9, 0.0, {})
    with pytest.raises(ValueError, match="no row of R is set"):
        ResultsMatrix(NAMES).ap()


def test_backward_transfer_gives_negative_forgetting():
    r = ResultsMatrix(["a", "b"])
    r.set_row(0, [0.4])
    r.set_row(1, {"a": 0.6, "b": 0.5})  # a improved after training on b
    assert r.forgetting() == pytest.approx(0.45 - 0.55)
    assert r.per_task_forgetting() == pytest.approx({"a": -0.2})


def test_lower_triangular_and_order_are_enforced():
    r = ResultsMatrix(NAMES)
    with pytest.raises(ValueError, match="exactly 1 scores"):
        r.set_row(0, [0.9, 0.1])  # a score above the diagonal
    with pytest.raises(ValueError, match="lower-triangular"):
        r.set_row(0, {"task088": 0.9, "task1510": 0.1})
    with pytest.raises(ValueError, match="before rows"):
        r.set_row(1, [0.5, 0.5])  # row 0 not set yet
    with pytest.raises(ValueError, match="out of range"):
        r.set_row(3, [0.1] * 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        r.set_row(0, [90.0])  # percentages are not scores
    with pytest.raises(ValueError, match="missing"):
        r.set_row(0, {"task1510": 0.5})
    r.set_row(0, [0.9])
    r.set_row(1, [0.6, 0.8])
    r.set_row(1, [0.6, 0.7])  # the last row may be re-set
    with pytest.raises(ValueError, match="only the last row"):
        r.set_row(0, [0.5])
    assert r[0, 1] is None and r[1, 2] is None and r[2, 0] is None  # above diagonal / not yet run
    assert r.matrix == [[0.9, None, None], [0.6, 0.7, None], [None, None, None]]
    with pytest.raises(ValueError, match="unique"):
        ResultsMatrix(["a", "a"])


def test_json_round_trip(tmp_path):
    r = filled(2)
    path = tmp_path / "sub" / "results.json"
    write_json_atomic(path, {**r.to_dict(), "AP": r.ap()})
    loaded = json.loads(path.read_text())
    assert loaded["R"] == [[0.9, None, None], [0.6, 0.8, None], [None, None, None]]
    back = ResultsMatrix.from_dict(loaded)
    assert back == r and back.completed == 2 and back.ap() == pytest.approx(r.ap())
    assert ResultsMatrix.from_dict(filled().to_dict()) == filled()
    bad = filled().to_dict()
    bad["R"][0][2] = 0.5
    with pytest.raises(ValueError, match="above the diagonal"):
        ResultsMatrix.from_dict(bad)


def test_write_json_atomic_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "record.json"
    write_json_atomic(path, {"v": 1})
    write_json_atomic(path, {"v": 2, "text": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"v": 2, "text": "é"}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": object()})  # not serialisable: the old file must survive
    assert json.loads(path.read_text(encoding="utf-8")) == {"v": 2, "text": "é"}
    assert sorted(os.listdir(tmp_path)) == ["record.json"]


def test_heatmap_is_a_valid_png(tmp_path):
    for n_rows in (0, 2, 3):
        path = filled(n_rows).heatmap(tmp_path / f"r{n_rows}.png", title="R (slice)")
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 100 and height > 100
        assert data[-8:-4] == b"IEND"
        pixels = matplotlib.image.imread(path)  # an independent PNG decoder reads it back
        assert pixels.shape[:2] == (height, width)


def test_table_lists_scores_x100_and_metrics(monkeypatch):
    text = filled().table()
    for needle in ("1. task088", "3. task181", "90.0", "30.0", "70.0", "AP 80.0", "FP 50.0", "Fgt +30.0"):
        assert needle in text
    monkeypatch.setitem(sys.modules, "rich.console", None)  # no rich: plain-text fallback
    plain = filled(2).table()
    lines = plain.splitlines()
    assert lines[2].split() == ["1.", "task088", "90.0"]
    assert lines[3].split() == ["2.", "task1510", "60.0", "80.0"]
    assert "AP 85.0" in plain and "FP 70.0" in plain
    assert "no completed stage" in ResultsMatrix(NAMES).table()


# --- base row R_0 (issue 17) -------------------------------------------------------------------
BASE = [0.5, 0.0, 0.25]


def test_base_row_metrics_by_hand():
    r = filled()
    r.set_base(dict(zip(NAMES, BASE)))
    # learned = mean(0.9-0.5, 0.8-0.0, 0.7-0.25) = (0.4 + 0.8 + 0.45) / 3 = 0.55
    assert r.learned() == pytest.approx(0.55)
    # retained = mean(0.3-0.5, 0.5-0.0, 0.7-0.25) = (-0.2 + 0.5 + 0.45) / 3 = 0.25
    assert r.retained() == pytest.approx(0.25)
    # after stage 1 only: learned = retained = 0.9 - 0.5
    one = filled(1)
    one.set_base(BASE)
    assert one.learned() == pytest.approx(0.4) and one.retained() == pytest.approx(0.4)
    # % of base: task1510's base is 0, so its ratios are undefined (None), never infinite
    rel = r.relative_to_base()
    assert rel[2] == [pytest.approx(0.6), None, pytest.approx(2.8)]
    assert rel[0] == [pytest.approx(1.8), None, None]
    assert r.summary()["learned"] == pytest.approx(0.55)


def test_base_row_is_validated_and_round_trips():
    r = filled()
    with pytest.raises(ValueError, match="missing \\['task181'\\]"):
        r.set_base({"task088": 0.1, "task1510": 0.2})
    with pytest.raises(ValueError, match="needs 3 scores"):
        r.set_base([0.1, 0.2])
    with pytest.raises(ValueError, match="base row is 1.5"):
        r.set_base([0.1, 1.5, 0.2])
    with pytest.raises(ValueError, match="needs the base row"):
        r.learned()
    assert "base" not in r.to_dict()  # runs without R_0 keep their old results.json layout
    r.set_base(BASE)
    back = ResultsMatrix.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.base == BASE and back == r


def test_heatmap_with_base_row_and_relative(tmp_path):
    r = filled()
    r.set_base(BASE)
    plain = matplotlib.image.imread(r.heatmap(tmp_path / "abs.png"))
    rel = matplotlib.image.imread(r.heatmap(tmp_path / "rel.png", relative=True))
    assert plain.shape[0] > 100 and rel.shape[0] > 100
    with pytest.raises(ValueError, match="needs the base row"):
        filled().heatmap(tmp_path / "x.png", relative=True)


def test_table_shows_the_base_row_and_the_gains():
    r = filled()
    r.set_base(BASE)
    text = r.table()
    assert "0. base" in text and "learned +55.0" in text and "retained +25.0" in text
    assert text.index("0. base") < text.index("1. task088")
