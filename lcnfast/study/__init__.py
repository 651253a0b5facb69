"""The laboratory: declarative Monte Carlo studies of gradient flows.

A study is a TOML spec (a grid of cells: architectures x losses x integrators x data x
initialisations; datasets and flows per cell). :func:`run_study` runs it in resumable shards
(here or on a dask cluster), :func:`load` reads every shard back as one xarray Dataset, and
:func:`write_report` writes ``report.md`` with tables and figures (and :func:`load_sections`
imports a spec's own report sections, for notebooks). The ``lcnfast`` command
(:mod:`lcnfast.cli`) is a thin layer over these functions.
"""

from .load import load, load_problem, read_spec
from .runner import RunSummary, reanalyse_study, run_study
from .spec import Study, builtin_specs, load_spec

__all__ = [
    "load_spec",
    "run_study",
    "reanalyse_study",
    "load",
    "load_problem",
    "read_spec",
    "write_report",
    "load_sections",
    "builtin_specs",
    "Study",
    "RunSummary",
]


def write_report(study_dir):
    """Write ``report.md`` and ``figures/*.png`` of a study directory; returns the report's path
    (see :mod:`lcnfast.study.report`)."""
    from .report import write_report as _write

    return _write(study_dir)


def load_sections(spec):
    """The module of a study's ``report.sections`` file (a built-in study's name, a TOML file,
    a spec dict or a :class:`Study`), imported as the report imports it, for notebooks that
    reuse the report's tables (see :func:`lcnfast.study.report.load_sections`)."""
    from .report import load_sections as _load

    return _load(spec)
