"""Edge cases of study specs and of the study functions' arguments: every bad spec is refused
by load_spec with its key path and TOML line (not accepted and then failing part-way through a
run), and bad Python arguments raise a TypeError or ValueError naming the argument."""

from __future__ import annotations

import copy

import pytest

from lcnfast.study import load_spec

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


def test_huge_integer_for_a_real_is_refused():
    refused(spec_with(data__noise=2**1100), "data.noise[0]: must be finite")


# ----------------------------------------------------------------------------- data


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


def test_empty_list_error_names_the_toml_line(tmp_path):
    p = tmp_path / "fz.toml"
    p.write_text(TOML.replace("m = 4", "m = []"))
    assert refused(p, "data.m: must not be empty").endswith(f"({p}, line 10)")


# ----------------------------------------------------------------------------- load_spec arguments


# ----------------------------------------------------------------------------- study directories


# ----------------------------------------------------------------------------- run_study arguments


