"""The lessons' check cells pass when a number moves as it does between machines and fail when
it moves meaningfully (0.3 EER points), in pytest and in a notebook run by nbval."""

import os
import subprocess
import sys

import nbformat
import pytest

from svlab.checks import (
    EER_POINTS,
    LessonCheckError,
    expect_comparison,
    expect_difference,
    expect_near,
    stated_rows,
)
from svlab.comparison import compare
from svlab.metrics import simulate_trials


@pytest.fixture(scope="module")
def table():
    sim = simulate_trials(30, 8, seed=3)
    pairs = [(f"{e}/s/1.wav", f"{t}/s/2.wav")
             for e, t in zip(sim.enroll_speakers, sim.test_speakers, strict=True)]
    return compare({"a": sim.scores_a, "b": sim.scores_b}, sim.labels, pairs, control="a",
                   resamples=200)


def moved(table, column, points):
    out = table.copy()
    out.loc[out.system == "b", column] += points / 100
    return out


def test_a_table_passes_its_own_stated_rows_and_prints_only_what_they_state(table, capsys):
    stated = stated_rows(table, echo=False)
    expect_comparison(table, stated)
    first = capsys.readouterr().out
    expect_comparison(moved(table, "eer", 0.04), stated)  # a last-digit move, as between CPUs
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("column", ["eer", "eer_low", "eer_high", "difference",
                                    "difference_low", "difference_high"])
def test_a_move_of_three_tenths_of_a_point_fails(table, column):
    stated = stated_rows(table, echo=False)
    expect_comparison(moved(table, column, 0.15), stated)
    with pytest.raises(LessonCheckError, match="stated"):
        expect_comparison(moved(table, column, 0.3), stated)


def test_a_verdict_flips_only_at_the_edge_and_the_check_says_where_it_may(capsys):
    stated = "+1.20 points [+0.60, +1.90], resolved"
    with pytest.raises(LessonCheckError, match="its low end stated"):
        expect_difference("x", (0.0100, -0.0005, 0.0190), stated)
    at_edge = "+0.90 points [+0.10, +1.70], resolved"
    expect_difference("x", (0.0089, -0.0005, 0.0171), at_edge)
    assert "the verdict may differ elsewhere" in capsys.readouterr().out


def test_near_checks_its_tolerance_and_refuses_a_negative_one():
    expect_near("EER (%)", 9.6499, 9.6, EER_POINTS)
    with pytest.raises(LessonCheckError, match="measured 9.9"):
        expect_near("EER (%)", 9.9, 9.6, EER_POINTS)
    with pytest.raises(LessonCheckError):
        expect_near("EER (%)", float("nan"), 9.6, EER_POINTS)
    with pytest.raises(ValueError, match="not negative"):
        expect_near("EER (%)", 9.6, 9.6, -1)


def test_a_stated_row_that_is_not_svlab_text_or_names_no_system_is_refused(table):
    with pytest.raises(ValueError, match="not an EER"):
        expect_comparison(table, {"a": "about ten percent"})
    with pytest.raises(ValueError, match="not a system"):
        expect_comparison(table, {"c": "9.6% [7.5, 12.4]"})


def lesson(tmp_path):
    """A two-cell lesson as committed: a volatile printout, then its check cell and output."""
    printout = nbformat.v4.new_code_cell(
        "# NBVAL_IGNORE_OUTPUT\nimport os\n"
        "eer_percent = 9.65 + float(os.environ['SVLAB_TEST_SHIFT'])\n"
        "print(f'EER {eer_percent:.1f}%')")
    printout.execution_count = 1
    printout.outputs = [nbformat.v4.new_output("stream", name="stdout", text="EER 9.7%\n")]
    check = nbformat.v4.new_code_cell(
        "# NBVAL_CHECK_OUTPUT\nfrom svlab.checks import EER_POINTS, expect_near\n"
        "expect_near('EER (%)', eer_percent, 9.6, EER_POINTS)")
    check.execution_count = 2
    check.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                            text="EER (%): 9.6 within 0.2\n")]
    nb = nbformat.v4.new_notebook(cells=[printout, check])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = tmp_path / "lesson.ipynb"
    nbformat.write(nb, path)
    return path


def test_nbval_passes_a_machine_sized_move_and_fails_a_meaningful_one(tmp_path):
    path = lesson(tmp_path)
    runs = {}
    for shift in ("-0.001", "0.3"):
        env = {**os.environ, "SVLAB_TEST_SHIFT": shift}
        runs[shift] = subprocess.run(
            [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p",
             "no:cacheprovider", "-q", str(path)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert runs["-0.001"].returncode == 0, runs["-0.001"].stdout[-2000:]
    assert runs["0.3"].returncode == 1, runs["0.3"].stdout[-2000:]
    assert "LessonCheckError" in runs["0.3"].stdout
