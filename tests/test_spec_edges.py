"""Edge cases of study specs and of the study functions' arguments: every bad spec is refused
by load_spec with its key path and TOML line (not accepted and then failing part-way through a
run), and bad Python arguments raise a TypeError or ValueError naming the argument."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lcnfast.study import builtin_specs, load, load_problem, load_spec, run_study
from lcnfast.study.load import read_spec
from lcnfast.study.directory import open_study_dir
from lcnfast.study.shards import write_datasets

BASE = {
    "name": "fz", "flows_per_dataset": 2, "architectures": [{"d0": 6, "k": [2, 2]}],
    "losses": ["square"], "data": {"m": 4},
    "integrator": {"method": "rk45", "t_end": 1.0, "save": 3},
}  # fmt: skip

TOML = """name = "fz"
flows_per_dataset = 2
losses = ["square"]

[[architectures]]
d0 = 6
k = [2, 2]

[data]
m = 4

[integrator]
method = "rk45"
t_end = 1.0
save = 3
"""


def spec_with(**edits):
    """BASE with ``section__key=value`` edits (``integrator__save=...``; ``seed=...``)."""
    spec = copy.deepcopy(BASE)
    for key, value in edits.items():
        *parents, last = key.split("__")
        table = spec
        for p in parents:
            table = table.setdefault(p, {})
        table[last] = value
    return spec


def refused(spec, where):
    with pytest.raises(ValueError) as e:
        load_spec(spec)
    assert str(e.value).startswith(where), str(e.value)
    return str(e.value)


def test_base_spec_is_valid():
    assert len(load_spec(BASE).cells) == 1


# ----------------------------------------------------------------------------- analysis
@pytest.mark.parametrize("key", ["eig_tol", "root_tol", "jac_tol", "zero_filter_tol"])
@pytest.mark.parametrize("value", [1, 2.0])
def test_analysis_tolerances_take_the_analysis_ranges(key, value):
    msg = refused(spec_with(analysis={key: value}), f"analysis.{key}: ")
    assert "[0, 1.0)" in msg
    load_spec(spec_with(analysis={key: 0.5}))


def test_analysis_tolerance_error_names_the_toml_line(tmp_path):
    p = tmp_path / "fz.toml"
    p.write_text(TOML + "\n[analysis]\neig_tol = 2\n")
    msg = refused(p, "analysis.eig_tol: ")
    assert msg.endswith(f"({p}, line 18)")


def test_a_missing_top_level_key_names_no_line_of_a_table(tmp_path):
    """A spec without `name` was reported at the line of [[losses]]'s `name = "square"`: a
    top-level key is looked for before the first table header only."""
    p = tmp_path / "noname.toml"
    text = TOML.replace('name = "fz"\n', "").replace('losses = ["square"]\n', "")
    p.write_text(text + '\n[[losses]]\nname = "square"\n')
    assert refused(p, "name: must be a name").endswith("got None")
    p.write_text('name = "bad name"\n' + text + '\n[[losses]]\nname = "square"\n')
    assert refused(p, "name: must be a name").endswith(f"({p}, line 1)")


def test_a_toml_file_with_a_byte_order_mark_is_read(tmp_path):
    """A UTF-8 BOM (written by some Windows editors) gave 'invalid TOML: Invalid statement
    (at line 1, column 1)'."""
    p = tmp_path / "bom.toml"
    p.write_bytes(b"\xef\xbb\xbf" + TOML.encode())
    assert load_spec(p).spec["name"] == "fz"


# ----------------------------------------------------------------------------- integrator
@pytest.mark.parametrize(
    "integrator, where",
    [
        ({"method": "rk45", "t_end": 1.0, "max_steps": 2**63}, "integrator[0].max_steps"),
        ({"method": "euler", "h": 0.1, "n_steps": 2**63}, "integrator[0].n_steps"),
        ({"method": "euler", "h": 0.1, "n_steps": 10, "save_every": 2**63},
         "integrator[0].save_every"),
        ({"method": "rk45", "t_end": 1.0, "save": 2**63}, "integrator[0].save"),
    ],
)
def test_counts_above_2_62_are_refused(integrator, where):
    assert "must be <= 2**62" in refused(spec_with(integrator=integrator), where + ": ")


@pytest.mark.parametrize("rtol", [1, 1.0, 5.0])
def test_rtol_of_one_or_more_is_refused(rtol):
    assert "must be < 1" in refused(spec_with(integrator__rtol=rtol), "integrator[0].rtol: ")


@pytest.mark.parametrize(
    "integrator, where",
    [
        ({"method": "rk45", "t_end": 1.0, "save": 1_000_000_000}, "integrator[0].save: "),
        ({"method": "euler", "h": 0.1, "n_steps": 2**40, "save_every": 1},
         "integrator[0].save_every: "),
    ],
)
def test_saves_beyond_the_flows_memory_limit_are_refused(integrator, where):
    assert "GiB" in refused(spec_with(integrator=integrator), where)


def test_huge_integer_for_a_real_is_refused():
    refused(spec_with(data__noise=2**1100), "data.noise[0]: must be finite")


# ----------------------------------------------------------------------------- data
@pytest.mark.parametrize(
    "inputs, where, what",
    [
        ({"low_rank": 100}, "data.inputs[0].low_rank: ", "rank must be <= min(d0, m)"),
        ({"low_rank": 5}, "data.inputs[0].low_rank: ", "rank must be <= min(d0, m)"),
        ({"gram_singular": 3}, "data.inputs[0].gram_singular: ", "nullity must be < k_v"),
    ],
)
def test_inputs_that_cannot_be_drawn_are_refused(inputs, where, what):
    assert what in refused(spec_with(data__inputs=inputs), where)
    load_spec(spec_with(data__inputs={"low_rank": 4}))


def test_low_rank_checked_for_every_m():
    msg = refused(spec_with(data__m=[8, 2], data__inputs={"low_rank": 3}), "data.inputs[0]")
    assert "m = 2" in msg


def test_data_files_of_the_wrong_shape_are_refused(tmp_path):
    f = tmp_path / "x.npz"
    np.savez(f, X=np.ones((5, 4)))  # d0 = 5, the architecture has d0 = 6
    msg = refused(spec_with(data={"inputs": {"file": str(f)}}), "data.inputs[0].file: ")
    assert "d0=6" in msg
    np.savez(f, X=np.random.default_rng(0).standard_normal((6, 4)))
    load_spec(spec_with(data={"inputs": {"file": str(f)}}))
    refused(spec_with(data={"inputs": {"file": str(f)}, "target": "file"}), "data.target[0]: ")


def test_unreadable_or_complex_data_files_are_refused_naming_the_file(tmp_path):
    """A garbage .npz was refused with numpy's "contains pickled data ... allow_pickle", a
    garbage .nc with three lines about xarray's engines, and a complex X was cast to real
    with only a numpy warning."""
    for name, what in (("x.npz", "is not a .npz file"), ("x.nc", "is not a netCDF file")):
        (tmp_path / name).write_bytes(b"not data at all\n" * 8)
        msg = refused(spec_with(data={"inputs": {"file": str(tmp_path / name)}}),
                      "data.inputs[0].file: ")
        assert what in msg and name in msg and "\n" not in msg
    f = tmp_path / "c.npz"
    np.savez(f, X=np.ones((6, 4)) + 1j)
    msg = refused(spec_with(data={"inputs": {"file": str(f)}}), "data.inputs[0].file: ")
    assert "X must hold real numbers" in msg


def test_data_files_of_the_same_name_in_two_folders_are_two_levels(tmp_path):
    """inputs = [{file = "da/data.npz"}, {file = "db/data.npz"}] was refused as a list with
    repeated values ('file:data.npz' twice): the labels keep as much of the paths as tells
    them apart."""
    rng = np.random.default_rng(0)
    files = []
    for sub in ("da", "db"):
        (tmp_path / sub).mkdir()
        files.append(str(tmp_path / sub / "data.npz"))
        np.savez(files[-1], X=rng.standard_normal((6, 4)))
    study = load_spec(spec_with(data={"inputs": [{"file": f} for f in files]}))
    assert [c.labels["inputs"] for c in study.cells] == ["file:da/data.npz", "file:db/data.npz"]
    one = load_spec(spec_with(data={"inputs": {"file": files[0]}}))
    assert one.cells[0].labels["inputs"] == "file:data.npz"  # alone: the name, as before


# ----------------------------------------------------------------------------- grid factors
@pytest.mark.parametrize(
    "edit, where",
    [
        ({"architectures": []}, "architectures"),
        ({"losses": []}, "losses"),
        ({"integrator": []}, "integrator"),
        ({"data__m": []}, "data.m"),
        ({"data__noise": []}, "data.noise"),
        ({"data__inputs": []}, "data.inputs"),
        ({"data__target": []}, "data.target"),
        ({"init__scale": []}, "init.scale"),
        ({"init__distribution": []}, "init.distribution"),
    ],
)
def test_empty_factor_lists_are_refused(edit, where):
    refused(spec_with(**edit), f"{where}: must not be empty")


@pytest.mark.parametrize(
    "edit, what",
    [
        (dict(data__noise=1e300), "data.noise = 1e+300"),
        (dict(data__target={"v": [1e300, 1.0, 1.0]}), "data.target = v=[1e+300"),
        (dict(data__inputs={"gram_near_singular": 1e300}), "gram_near_singular=1e+300"),
    ],
)
def test_data_too_large_for_float64_is_refused(edit, what):
    """These passed load_spec, wrote spec.json and then failed in the run (image_minimum:
    every local minimisation diverged; Eigenvalues did not converge)."""
    msg = refused(spec_with(**edit), "data: X and Y are too large for float64")
    assert what in msg


def test_empty_list_error_names_the_toml_line(tmp_path):
    p = tmp_path / "fz.toml"
    p.write_text(TOML.replace("m = 4", "m = []"))
    assert refused(p, "data.m: must not be empty").endswith(f"({p}, line 10)")


def test_repeated_levels_name_the_key_and_line(tmp_path):
    p = tmp_path / "fz.toml"
    p.write_text(TOML.replace("m = 4", "m = [4, 4]"))
    assert refused(p, "data.m: the list has repeated values").endswith(f"({p}, line 10)")


# ----------------------------------------------------------------------------- load_spec arguments
def test_load_spec_arguments(tmp_path):
    with pytest.raises(TypeError, match="spec must be"):
        load_spec(None)
    with pytest.raises(TypeError, match="quick must be True or False"):
        load_spec(BASE, quick="no")
    p = tmp_path / "binary.toml"
    p.write_bytes(b'name = "\xff\xfe"\n')
    with pytest.raises(ValueError, match=r"binary\.toml: not a UTF-8 TOML file"):
        load_spec(p)


def test_a_directory_never_shadows_a_built_in_study(tmp_path, monkeypatch):
    """`study run quickstart --out quickstart` a second time said 'spec: no such file:
    quickstart': the directory of the first run, in the current directory, was taken as the
    spec. A name that is no file is a built-in's; a directory is never a spec."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").mkdir()
    assert load_spec("quickstart", quick=True).source == str(builtin_specs()["quickstart"])
    (tmp_path / "somedir").mkdir()
    with pytest.raises(ValueError, match=r"^spec: somedir is a directory, not a spec file$"):
        load_spec("somedir")
    with pytest.raises(ValueError, match=r"^spec: no such file: other\.toml$"):
        load_spec("other.toml")
    with pytest.raises(ValueError, match=r"^spec: 'other' is neither a \.toml file nor a built-in"):
        load_spec("other")


# ----------------------------------------------------------------------------- study directories
@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A study directory with spec.json and the data (no flows run): 1 cell, 1 dataset."""
    d = tmp_path_factory.mktemp("edges") / "fz"
    study = load_spec(BASE)
    write_datasets(study, open_study_dir(study, d))
    return d


def test_study_dir_must_be_a_path():
    for fn in (read_spec, load, lambda d: load_problem(d, 0, 0)):
        with pytest.raises(TypeError, match="study_dir must be a path"):
            fn(None)


@pytest.mark.parametrize(
    "cell, dataset, error, match",
    [
        ("0", 0, TypeError, "cell must be a whole number"),
        (0.0, 0, TypeError, "cell must be a whole number"),
        (True, 0, TypeError, "cell must be a whole number"),
        (1, 0, ValueError, r"cell must be in 0\.\.0, got 1"),
        (-1, 0, ValueError, r"cell must be in 0\.\.0, got -1"),
        (0, 7, ValueError, r"dataset must be in 0\.\.0, got 7"),
        (0, -1, ValueError, r"dataset must be in 0\.\.0, got -1"),
        (0, "0", TypeError, "dataset must be a whole number"),
    ],
)
def test_load_problem_checks_cell_and_dataset(study_dir, cell, dataset, error, match):
    with pytest.raises(error, match=match):
        load_problem(study_dir, cell, dataset)


def test_load_problem_valid(study_dir):
    assert load_problem(study_dir, np.int64(0), 0).arch.d0 == 6


@pytest.mark.parametrize(
    "cells, error, match",
    [
        (0, TypeError, "cells must be a list of cell numbers"),
        ("0", TypeError, "cells must be a list of cell numbers"),
        ([5], ValueError, r"cells must be in 0\.\.0, got 5"),
        ([0.5], TypeError, "cells must be a whole number"),
        ([], ValueError, "cells must not be empty"),
        ([0], ValueError, r"no finished shards of cells \[0\] yet"),
    ],
)
def test_load_checks_cells(study_dir, cells, error, match):
    with pytest.raises(error, match=match):
        load(study_dir, cells=cells)


# ----------------------------------------------------------------------------- run_study arguments
@pytest.mark.parametrize("kw, match", [
    ({"progress": "no"}, "progress must be True or False"),
    ({"report": 1}, "report must be True or False"),
    ({"quick": "no"}, "quick must be True or False"),
])  # fmt: skip
def test_run_study_flags_must_be_bools(tmp_path, kw, match):
    with pytest.raises(TypeError, match=match):
        run_study(BASE, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_run_study_shard_size_checks_the_save_size(tmp_path):
    spec = spec_with(flows_per_dataset=10**6, shard_size=1, integrator__save=10**6)
    load_spec(spec)
    with pytest.raises(ValueError, match=r"shard_size=10000: integrator\[0\]\.save: .*GiB"):
        run_study(spec, tmp_path / "out", shard_size=10**4, progress=False)
    assert not (tmp_path / "out").exists()


def test_levels_that_differ_get_distinct_labels_and_equal_ones_are_refused():
    """Two integrators differing only in grad_tol, or deltas equal to 6 digits, were refused as
    'repeated values' (their short labels coincide): now labelled apart; true repeats are
    still refused."""
    rk = {"method": "rk45", "t_end": 1.0, "save": 3}
    s = load_spec(spec_with(integrator=[dict(rk, grad_tol=1e-10), dict(rk, grad_tol=1e-6)]))
    labels = sorted({c.labels["integrator"] for c in s.cells})
    assert labels == ["rk45(t_end=1, rtol=1e-08, grad_tol=1e-06)",
                      "rk45(t_end=1, rtol=1e-08, grad_tol=1e-10)"]
    ph = [{"name": "pseudo_huber", "params": {"delta": d}} for d in (1.0000001, 1.0000002)]
    s = load_spec(spec_with(losses=ph))
    assert sorted({c.labels["loss"] for c in s.cells}) == [
        "pseudo_huber(delta=1.0000001)", "pseudo_huber(delta=1.0000002)"]
    refused(spec_with(integrator=[rk, dict(rk)]), "integrator: the list has repeated values")


def test_an_error_in_the_quick_table_names_its_key_and_line(tmp_path):
    """[quick] flows_per_dataset = 0 was reported as 'flows_per_dataset: ... line 2' (the
    full-size value's line, which is fine). The full size validates [quick] too: a typo
    (flow_per_dataset) or a bad value in it passed a run without --quick silently."""
    p = tmp_path / "fz.toml"
    for quick in (True, False):
        p.write_text(TOML + "\n[quick]\nflows_per_dataset = 0\n")
        with pytest.raises(ValueError) as e:
            load_spec(p, quick=quick)
        assert str(e.value) == f"quick.flows_per_dataset: must be >= 1, got 0 ({p}, line 18)"
        p.write_text(TOML + "\n[quick]\nflow_per_dataset = 2\n")
        with pytest.raises(ValueError, match=r"^quick\.flow_per_dataset: unknown key \(did you "
                           r"mean 'flows_per_dataset'\?\).*line 18\)$"):  # fmt: skip
            load_spec(p, quick=quick)
        for extra, line in (("\n[quick.data]\nm = [0]\n", 18),
                            ("\n[quick]\nshard_size = 4\n\n[quick.data]\nm = [0]\n", 21)):
            p.write_text(TOML + extra)
            with pytest.raises(ValueError, match=rf"^quick\.data\.m\[0\]: .*line {line}\)$"):
                load_spec(p, quick=quick)
    p.write_text(TOML + "\n[quick]\nflows_per_dataset = 1\n")
    assert load_spec(p).spec["flows_per_dataset"] == 2


def test_a_dataset_too_large_for_memory_is_a_spec_error():
    refused(spec_with(data__m=10**10), "data: a dataset does not fit in memory")


def test_the_command_reports_out_of_memory_in_one_line(monkeypatch, capsys):
    from lcnfast import cli

    def huge(a):
        raise MemoryError("Unable to allocate 931. GiB for an array")

    monkeypatch.setattr(cli, "_cmd_list", huge)
    assert cli.main(["study", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lcnfast: error: out of memory (Unable to allocate 931. GiB")
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- study size
def test_a_study_of_more_shards_than_files_can_hold_is_refused_before_anything_is_written(
        tmp_path):
    """flows_per_dataset = 1e12 used to reach the run, write spec.json and the datasets, then
    fail allocating one entry per flow to plan the shards (931 GiB). Now the spec is refused
    (more than MAX_SHARDS shards, one file each), and so is a run's shard_size that makes
    too many; a study just under the limit is planned without per-flow memory."""
    from lcnfast.study.shards import plan
    from lcnfast.study.spec_checks import MAX_SHARDS

    msg = refused(spec_with(flows_per_dataset=10**12), "flows_per_dataset")
    assert "3.91e+09 shards of at most 256 flows" in msg and "raise shard_size" in msg
    big = spec_with(flows_per_dataset=MAX_SHARDS + 1, shard_size=1_000_000)
    with pytest.raises(ValueError, match=r"^shard_size=1: .*shards"):
        run_study(big, tmp_path / "big", shard_size=1, progress=False, report=False)
    assert not (tmp_path / "big").exists()
    todo = plan(load_spec(big), [], 1_000_000)  # 11 shards, planned from the ranges
    assert [(s.f0, s.f1) for s in todo] == [(i * 10**6, min(MAX_SHARDS + 1, (i + 1) * 10**6))
                                            for i in range(11)]
