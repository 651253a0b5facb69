"""Every built-in study (``studies/*.toml``) runs at its ``--quick`` size, and its analysis
notebook (``studies/notebooks/<name>.py``, jupytext percent format) executes on the result.

The quick runs are module-scoped and shared with the notebooks, which find them complete
(``run_study`` plans nothing) through ``LCNFAST_DATA``. What each study's report claims is
checked here only for form (a verdict for every claim); the science is in each study's own
sections and their tests.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jupytext
import nbclient
import pytest

from lcnfast import study

STUDIES = sorted(n for n in study.builtin_specs() if n != "quickstart")
NOTEBOOKS = Path(__file__).resolve().parents[1] / "studies" / "notebooks"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("studies")


_NUMPY_WARNINGS = {}  # study name -> numpy's warnings during its quick run (and report)


def _quick_run(name, data_dir):
    out = data_dir / f"{name}-quick"
    if not (out / "report.md").exists():
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            study.run_study(name, out, quick=True, progress=False)
        _NUMPY_WARNINGS[name] = [f"{w.message} ({w.filename})" for w in rec
                                 if f"{os.sep}numpy{os.sep}" in w.filename]
    return out


@pytest.mark.parametrize("name", STUDIES)
def test_study_runs_quick_and_reports_verdicts(name, data_dir):
    out = _quick_run(name, data_dir)
    assert study.load(out).sizes["flow"] == study.load_spec(name, quick=True).n_flows
    text = (out / "report.md").read_text()
    # a study's report states its claims with a verdict each (lcnfast.study.claims)
    assert "| claim | tolerance | measured | verdict |" in text, f"{name}: no claims table"
    assert not [p for p in (out / "figures").glob("*.png") if p.stat().st_size == 0]
    # a report's NaN cells are expected (flows that stopped early): they say "-", and numpy's
    # "All-NaN slice" and the like reach the user's terminal as noise, so none may escape
    assert not _NUMPY_WARNINGS.get(name), _NUMPY_WARNINGS[name]


@pytest.mark.parametrize("name", STUDIES)
def test_notebook_executes_on_the_quick_run(name, data_dir, monkeypatch):
    path = NOTEBOOKS / f"{name}.py"
    assert path.is_file(), f"study {name} has no notebook {path}"
    _quick_run(name, data_dir)
    monkeypatch.setenv("LCNFAST_QUICK", "1")
    monkeypatch.setenv("LCNFAST_DATA", str(data_dir))
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(data_dir)}}
    )
    client.execute()
