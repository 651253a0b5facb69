"""lcnfast._data_entry: the fast data path compiled once, as a C function the kernels call by
address (the data path's numbers themselves are tested through the Problem and the flows),
and the vectorised function-space Hessian it also runs (lcnfast._data_hessian)."""

import numba
import numpy as np
import pytest
from numba.core.errors import TypingError

from lcnfast import (Architecture, Problem, _data_entry, _data_hessian, _data_path, data,
                     losses)


def _problem(loss, **kw):
    arch = Architecture(9, (2, 2), (1, 1))
    td = data.teacher(arch, 12, seed=0)
    return Problem(arch, td.X, td.Y, loss, **kw)


def test_only_models_off_the_gram_path_carry_the_data_path_address():
    """The square loss on its window Gram never runs the data path: its Model holds
    NO_DATA_PASS; every other Model holds the one compiled data path's address."""
    assert _problem(losses.square()).model.data_fn == _data_entry.NO_DATA_PASS
    fns = {_problem(loss, **kw).model.data_fn
           for loss, kw in ((losses.square(), dict(use_gram=False)), (losses.log_cosh(1.0), {}),
                            (losses.lp(4), {}))}
    assert fns == {_data_entry.address()} and _data_entry.address() != 0


def test_a_model_without_the_data_path_gives_nan_instead_of_calling_address_zero():
    """Defensive: fs_loss_grad_fast on a Gram-path Model (no kernel calls it there) returns
    NaN and a NaN gradient rather than jumping to address 0."""
    p = _problem(losses.square())
    v = np.ones(p.arch.k_v)
    G = np.zeros(p.arch.k_v)
    L = _data_entry.fs_loss_grad_fast(p.model, v, G, np.zeros(8), True, True)
    assert np.isnan(L) and np.isnan(G).all()


def test_the_call_gives_the_loss_and_gradient_of_the_problem():
    """Through the address: L and G = dL/dv of log-cosh at v = pi(w) equal Problem.loss and,
    chained through pi, Problem.grad's function-space gradient: checked against the exact
    path one window at a time (fs_loss_grad with the sums in order), to 1e-13 relative (the
    fast path reorders sums of ~100 terms of one sign pattern and uses a 4-ulp tanh)."""
    p = _problem(losses.log_cosh(2.0))
    md = p.model
    v = np.linspace(-0.7, 0.9, p.arch.k_v)
    G = np.zeros(p.arch.k_v)
    L = _data_entry.fs_loss_grad_fast(md, v, G, _data_path._data_buf(md), True, True)
    G_ref = np.zeros(p.arch.k_v)
    L_ref = _data_path._fs_loss_grad_seq(md, v, G_ref)
    assert abs(L - L_ref) <= 1e-13 * abs(L_ref)
    np.testing.assert_allclose(G, G_ref, rtol=1e-13, atol=1e-13 * np.abs(G_ref).max())
    G2 = np.zeros(p.arch.k_v)  # without the loss: G bitwise the same, L NaN
    assert np.isnan(_data_entry.fs_loss_grad_fast(md, v, G2, _data_path._data_buf(md), True,
                                                  False))
    np.testing.assert_array_equal(G2, G)


def test_call_data_pass_refuses_arrays_it_cannot_pass_as_pointers():
    """A non-contiguous array would be read as if it were contiguous: refused when the caller
    compiles, naming the argument."""

    @numba.njit
    def call(md, v, G, buf):
        return _data_entry.call_data_pass(md.data_fn, md.code, md.p0, md.p1, md.k_v, md.d_N,
                                          md.s_v, md.x_amax, md.y_amax, md.Xt, md.Yt, v, G,
                                          buf, True, True, False)

    md = _problem(losses.log_cosh(1.0)).model
    kv = md.k_v
    with pytest.raises(TypingError, match="v must be a C-contiguous 1-d float64"):
        call(md, np.zeros(2 * kv)[::2], np.zeros(kv), _data_path._data_buf(md))


def test_a_problem_unpickled_in_another_process_calls_that_process_data_path(tmp_path):
    """A Problem pickled here and unpickled in a fresh process evaluates there (the address
    in its Model is the new process's, not this one's: calling this one's crashed the
    process) and gives this process's gradient, bitwise."""
    import pickle
    import subprocess
    import sys

    p = _problem(losses.log_cosh(1.0))
    w = np.linspace(-0.5, 0.8, p.arch.n_params)
    (tmp_path / "p.pkl").write_bytes(pickle.dumps((p, w)))
    code = ("import pickle, sys, numpy as np; p, w = pickle.load(open(sys.argv[1], 'rb')); "
            "np.save(sys.argv[2], p.grad(w))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.pkl"),
                    str(tmp_path / "g.npy")], check=True, timeout=600)
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy"), p.grad(w))


@pytest.mark.parametrize("arch, m", [(Architecture(64, (5, 5, 5), (1, 1, 1)), 64),
                                     (Architecture(21, (3, 2), (2, 1)), 40)])
@pytest.mark.parametrize("loss", [losses.log_cosh(1.0), losses.log_cosh(7.0), losses.lp(4),
                                  losses.pseudo_huber(0.5),
                                  losses.generalized_huber(1.0, -1.5)])
def test_the_vectorised_hessian_matches_one_window_at_a_time(arch, m, loss):
    """Claim: data_hessian (through the address; stride 1 and stride 2 layouts) gives the
    function-space Hessian sum_t l''(r_t) x_t x_t^T of one window at a time to 1e-13 of its
    largest entry (sums of ~2500 terms reordered, log-cosh's l'' within a few ulp of libm's;
    measured ~6e-15), exactly symmetric."""
    td = data.teacher(arch, m, seed=0)
    p = Problem(arch, td.X, td.Y, loss)
    v = np.random.default_rng(1).standard_normal(arch.k_v) * 0.4
    H = np.zeros((arch.k_v, arch.k_v))
    H_ref = np.zeros_like(H)
    assert _data_entry.fs_hessian_fast(p.model, v, H, _data_path._data_buf(p.model))
    _data_hessian._fs_hessian_seq(p.model, v, H_ref)
    assert np.abs(H - H_ref).max() <= 1e-13 * np.abs(H_ref).max()
    np.testing.assert_array_equal(H, H.T)


def test_few_samples_keep_the_hessian_of_one_window_at_a_time():
    """Below 16 samples the vectorised layout does not apply: fs_hessian_fast declines and
    leaves H alone, and Problem.function_space_hessian is bitwise the exact loop's."""
    p = _problem(losses.log_cosh(1.0))  # m = 12
    v = np.linspace(-0.7, 0.9, p.arch.k_v)
    H = np.full((p.arch.k_v, p.arch.k_v), 3.0)
    assert not _data_entry.fs_hessian_fast(p.model, v, H, _data_path._data_buf(p.model))
    assert (H == 3.0).all()
    H_ref = np.zeros_like(H)
    _data_hessian._fs_hessian_seq(p.model, v, H_ref)
    np.testing.assert_array_equal(p.function_space_hessian(v), H_ref)
