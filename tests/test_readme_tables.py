"""The measured tables of the READMEs are the JSON in benchmarks/results/, written by
benchmarks/tables.py: a README edited by hand or a JSON re-measured without rewriting the tables
fails here (fix: `python benchmarks/tables.py`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TABLES_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "tables.py"


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("nncme_bench_tables", TABLES_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_json(tables, capsys):
    status = tables.main(["--check"])
    assert status == 0, capsys.readouterr().err


def test_check_names_the_table_that_drifted(tables):
    readme = tables.README.read_text()
    block = tables.block("accuracy").search(readme)
    edited = block.group(2).replace("| ", "| 0.001 ", 1)  # one hand-edited cell
    text = readme[: block.start(2)] + edited + readme[block.end(2) :]
    fixed, problems = tables.update(text, tables.TABLES[tables.README])
    assert problems == ["accuracy: differs from the JSON"]
    assert fixed == readme


def test_check_reports_missing_markers(tables):
    text = tables.README.read_text().replace("<!-- /tables:headline -->", "")
    _, problems = tables.update(text, {"headline": tables.table_headline})
    assert problems == ["headline: 0 marker pairs (want one)"]
