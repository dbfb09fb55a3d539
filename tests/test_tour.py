"""`svlab tour` runs every notebook's main computation and its numbers tell the papers' story.

The tour takes minutes (it traces full-size models and quantizes the tutorial one), so the
tests that run it are marked slow: ``make test`` runs them, ``make test-fast`` does not.
"""

import pandas as pd
import pytest

import svlab.tour
from svlab.cli import main
from svlab.tour import run_tour

MESSAGES: list[str] = []


@pytest.fixture(scope="module")
def table():
    return run_tour("ci", report=MESSAGES.append).set_index("what")["value"]


@pytest.mark.slow
def test_tour_reports_each_part_in_order(table):
    assert [m.split()[0] for m in MESSAGES] == ["00", "01-02", "03", "04-06"]


def number(table, what):
    return float(table[what])


@pytest.mark.slow
def test_tour_covers_every_notebook(table):
    assert set(table.index) >= {
        "tutorial model EER", "rev_resnet34 + 8-bit Adam, saving",
        "resnet34 Adam state 8-bit / fp32", "4-bit kmeans EER (no fine-tuning)",
        "mixed precision at the 3-bit size, EER", "1-bit static EER (no fine-tuning)",
    }  # fmt: skip


@pytest.mark.slow
def test_tour_numbers_are_the_papers_effects(table):
    assert number(table, "tutorial model EER") < number(table, "mean-fbank baseline EER") / 2
    assert number(table, "rev_resnet34 + 8-bit Adam, saving") >= 2
    assert number(table, "rev_dfresnet233 + 8-bit Adam, saving") >= 10
    assert number(table, "resnet34 Adam state 8-bit / fp32") <= 0.27
    assert number(table, "4-bit size ratio") >= 7
    assert number(table, "4-bit kmeans EER (no fine-tuning)") < number(
        table, "2-bit kmeans EER (no fine-tuning)"
    )


def test_tour_command_prints_the_table(capsys, monkeypatch):
    row = {"notebook": "00", "what": "tutorial model EER", "value": "13.70", "unit": "%"}
    monkeypatch.setattr(svlab.tour, "run_tour", lambda *args: pd.DataFrame([row]))
    assert main(["tour"]) == 0
    assert "tutorial model EER" in capsys.readouterr().out
