"""Tutorial 04's data cell: the CogQA path from ``COGQA`` or ``VH_LENS_COGQA``, refused when wrong, a loud fallback.

The cells are run alone (no model), with the names the notebook's first cell imports.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from test_functional import write_cogqa_file

from vh_lens.data.cogvision import load_cogvision, subquestion_samples

NOTEBOOK = Path(__file__).resolve().parents[2] / "tutorials" / "04_functional_heads.ipynb"


def _cells() -> tuple[str, str]:
    cells = [c for c in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    data = [c for c in cells if "VH_LENS_COGQA" in "".join(c["source"]) and c not in params]
    assert len(params) == 1 and len(data) == 1
    return "".join(params[0]["source"]), "".join(data[0]["source"])


def _run(monkeypatch, env: str | None, cogqa: str | None = None) -> dict:
    params, data = _cells()
    if env is None:
        monkeypatch.delenv("VH_LENS_COGQA", raising=False)
    else:
        monkeypatch.setenv("VH_LENS_COGQA", env)
    scope = {"os": os, "json": json, "tempfile": tempfile, "Path": Path, "Counter": Counter,
             "load_cogvision": load_cogvision, "subquestion_samples": subquestion_samples}  # fmt: skip
    exec(params, scope)  # noqa: S102 - the notebook's own cell
    if cogqa is not None:
        scope["COGQA"] = cogqa
    exec(data, scope)  # noqa: S102
    return scope


def test_the_environment_variable_names_the_file_or_its_folder(tmp_path, monkeypatch, capsys) -> None:
    test_file = write_cogqa_file(tmp_path / "cogqa_balanced_cot_test_data.json", n_items=5)
    for given in (test_file, tmp_path):
        scope = _run(monkeypatch, str(given))
        assert scope["data_file"] == test_file and len(scope["items"]) == 5
        assert "FALLING BACK" not in capsys.readouterr().out


def test_the_parameter_wins_over_the_environment(tmp_path, monkeypatch) -> None:
    test_file = write_cogqa_file(tmp_path / "mine.json", n_items=4)
    scope = _run(monkeypatch, str(tmp_path / "nothing_here"), cogqa=str(test_file))
    assert scope["data_file"] == test_file and len(scope["items"]) == 4


def test_a_wrong_path_is_refused(tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"from VH_LENS_COGQA\) is not cogqa_balanced_cot_test_data.json"):
        _run(monkeypatch, str(tmp_path / "missing"))


def test_no_path_falls_back_loudly(monkeypatch, capsys) -> None:
    scope = _run(monkeypatch, None)
    out = capsys.readouterr().out
    assert "CogQA NOT GIVEN" in out and "FALLING BACK to 40 inline items" in out and "NOT CogQA's" in out
    assert len(scope["items"]) == 40
