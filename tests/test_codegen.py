"""The generated straight-line kernels (lcnfast._codegen) against the generic lane kernels,
and the Problem's choice between them (kernel="auto" / "generic" / "generated").

Every architecture here compiles a kernel of its own (a fraction of a second to ~2 s), so the
cases are few and chosen to cover what the generator special-cases: a single layer, k_v = 1,
dilated layers with structurally zero coefficients, strides, depth 4."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from strategies import arch_specs, random_params

import lcnfast
from lcnfast import Architecture, Problem, _codegen, data, losses
from lcnfast import problem as problem_mod

ARCHS = [
    (5, (1,), (1,)),  # k_v = 1
    (10, (4,), (2,)),  # one layer
    (32, (3, 3, 3), (1, 1, 1)),
    (14, (2, 2), (3, 1)),  # dilation 3: v has a structural zero (degree 2)
    (40, (2, 3, 2), (2, 1, 2)),
    (30, (2, 1, 3, 2), (1, 2, 1, 1)),  # depth 4
]


def _pair(d0, k, s, seed=0, m=7):
    arch = Architecture(d0, k, s)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((d0, m))
    Y = rng.standard_normal((arch.d_N, m))
    gen = Problem(arch, X, Y, losses.square(), kernel="generic")
    fast = Problem(arch, X, Y, losses.square(), kernel="generated")
    W = np.stack([random_params(rng, arch) for _ in range(21)])  # 21: a partial lane block
    return arch, gen, fast, W


@pytest.mark.parametrize("d0,k,s", ARCHS)
def test_generated_equals_generic(d0, k, s):
    arch, gen, fast, W = _pair(d0, k, s)
    L1, G1 = gen.loss_and_grad(W)
    L2, G2 = fast.loss_and_grad(W)
    assert gen.kernel_in_use == "generic" and fast.kernel_in_use == "generated"
    np.testing.assert_array_equal(L2, L1)
    np.testing.assert_array_equal(G2, G1)
    # and the one-flow kernels (Hessian, loss) agree with it
    np.testing.assert_array_equal(fast.loss(W), L1)


@settings(max_examples=4)
@given(arch_specs(max_k=4, max_s=3))
def test_generated_equals_generic_random(spec):
    if _codegen.n_products(Architecture(*spec)) > 300:
        return  # keep the compile cost of this test small
    arch, gen, fast, W = _pair(*spec, seed=3)
    np.testing.assert_array_equal(fast.loss_and_grad(W)[1], gen.loss_and_grad(W)[1])


def test_product_count_matches_source():
    # dilations (1,1,1), (1,3), (1,), (1,5)
    for d0, k, s in [(32, (3, 3, 3), (1, 1, 1)), (14, (2, 2), (3, 1)), (5, (1,), (1,)),
                     (30, (5, 4), (5, 1))]:
        arch = Architecture(d0, k, s)
        assert _codegen.n_products(arch) == _codegen.kernel_source(arch).count("*")


def test_flows_equal_with_either_kernel():
    arch, gen, fast, W = _pair(32, (3, 3, 3), (1, 1, 1), m=16)
    for run in (
        lambda p: lcnfast.gradient_descent(p, W, h=1e-2, n_steps=300, save_every=100),
        lambda p: lcnfast.gradient_flow(p, W[:9], t_end=5.0, save_times=[0.0, 1.0, 5.0]),
    ):
        a, b = run(gen), run(fast)
        assert (a.attrs["gradient_kernel"], b.attrs["gradient_kernel"]) == ("generic", "generated")
        for name in ("w_final", "v_final", "loss", "grad_norm", "n_grad_evals", "v_l1_max"):
            assert np.array_equal(a[name].values, b[name].values, equal_nan=True), name


def test_auto_switches_after_enough_evaluations(monkeypatch):
    arch = Architecture(32, (3, 3, 3), (1, 1, 1))
    td = data.teacher(arch, 8, seed=0)
    p = Problem(arch, td.X, td.Y, losses.square())
    assert p.kernel == "auto"
    monkeypatch.setattr(problem_mod, "AUTO_GENERATE_EVALS", 50)
    W = data.initial_filters(arch, 30, seed=1)
    monkeypatch.setattr(problem_mod, "AUTO_GENERATE_MIN_BATCH", 20)
    L1, _ = p.loss_and_grad(W)
    assert p.kernel_in_use == "generic"
    L2, _ = p.loss_and_grad(W)  # 60 evaluations asked for: now generated
    assert p.kernel_in_use == "generated"
    np.testing.assert_array_equal(L1, L2)
    p.loss_and_grad(W[:19])  # a small batch: generic (dispatching the kernel costs more)
    assert p.kernel_in_use == "generic"
    p.grad(W[0])
    assert p.kernel_in_use == "generic"


def test_kernel_argument_checked():
    arch = Architecture(32, (3, 3, 3), (1, 1, 1))
    td = data.teacher(arch, 8, seed=0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        Problem(arch, td.X, td.Y, losses.square(), kernel="fast")
    with pytest.raises(ValueError, match="kernel='generated' needs the square loss"):
        Problem(arch, td.X, td.Y, losses.log_cosh(1.0), kernel="generated")
    with pytest.raises(ValueError, match="kernel='generated' needs"):
        Problem(arch, td.X, td.Y, losses.square(), use_gram=False, kernel="generated")
    big = Architecture(200, (7, 7, 7, 7), (1, 1, 1, 1))
    assert _codegen.n_products(big) > _codegen.MAX_PRODUCTS
    tb = data.teacher(big, 4, seed=0)
    with pytest.raises(ValueError, match="products"):
        Problem(big, tb.X, tb.Y, losses.square(), kernel="generated")
    # too big for "auto": stays generic whatever the batch
    assert Problem(big, tb.X, tb.Y, losses.square()).kernel == "generic"


def test_cache_dir_and_fresh_process(tmp_path):
    """Kernels are written under LCNFAST_CACHE_DIR and load in a new process from there."""
    code = (
        "import numpy as np\n"
        "from lcnfast import Architecture, Problem, losses\n"
        "a = Architecture(6, (2, 3), (2, 1))\n"
        "rng = np.random.default_rng(0)\n"
        "p = Problem(a, rng.standard_normal((6, 5)), rng.standard_normal((a.d_N, 5)),"
        " losses.square(), kernel='generated')\n"
        "print(repr(float(p.loss_and_grad(np.ones((3, a.n_params)))[0][0])))\n"
    )
    env = {**os.environ, "LCNFAST_CACHE_DIR": str(tmp_path)}
    out = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout
        for _ in range(2)
    ]
    assert out[0] == out[1]
    files = list(tmp_path.glob("lcnfast_lane_*.py"))
    assert len(files) == 1
    assert "Generated by lcnfast._codegen" in files[0].read_text()


def test_unwritable_cache_dir_falls_back_to_generic(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("LCNFAST_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setattr(_codegen, "_LOADED", {})
    arch = Architecture(13, (2, 2, 3), (1, 2, 1))
    td = data.teacher(arch, 5, seed=0)
    W = data.initial_filters(arch, 9, seed=1)
    auto = Problem(arch, td.X, td.Y, losses.square())
    monkeypatch.setattr(problem_mod, "AUTO_GENERATE_EVALS", 1)
    monkeypatch.setattr(problem_mod, "AUTO_GENERATE_MIN_BATCH", 1)
    with pytest.warns(RuntimeWarning, match="cannot write generated kernels"):
        L, _ = auto.loss_and_grad(W)
    assert auto.kernel_in_use == "generic" and auto.kernel == "generic"
    forced = Problem(arch, td.X, td.Y, losses.square(), kernel="generated")
    with pytest.raises(OSError):
        forced.loss_and_grad(W)


def test_generated_kernel_loop_is_simd_with_noalias():
    """The lane loop of a generated kernel vectorises because the kernel is compiled with
    ``noalias`` (see lcnfast._codegen): the same source without it stays scalar (LLVM gives up
    on the run-time overlap checks of ~150 row pointers). Checked on the optimised LLVM IR
    (vector types ``<N x double>``), which every x86-64 target has (SSE2 at least), so the
    claim does not depend on this machine's vector width; both compile uncached."""
    from lcnfast import _numba_cache

    ns = {"carray": numba.carray}
    exec(compile(_codegen.kernel_source(Architecture(32, (3, 3, 3))), "gen", "exec"), ns)
    ir = {}
    for noalias in (False, True):
        cf = _numba_cache.cfunc(_codegen.LANE_KERNEL_SIG, cache=False, noalias=noalias)(
            ns["kernel"]
        )
        ir[noalias] = cf.inspect_llvm()
    assert "x double> " in ir[True] and "fmul <" in ir[True]
    assert "fmul <" not in ir[False]


def test_import_compiles_under_numba_debuginfo(tmp_path):
    """``import lcnfast`` works under NUMBA_DEBUGINFO=1: Numba then reads the line of the
    first statement after a docstring, and a kernel compiled at import with a docstring-only
    body (once the placeholder lane kernel) made that an IndexError for anyone debugging with
    line information. An empty cache, so that whatever import compiles really compiles."""
    env = {**os.environ, "NUMBA_DEBUGINFO": "1", "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
           "LCNFAST_CACHE_DIR": str(tmp_path / "lcnfast")}
    out = subprocess.run([sys.executable, "-c", "import lcnfast; print('imported')"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "imported"


def test_import_leaves_scipy_optimize_to_the_analysis_that_uses_it():
    """``import lcnfast`` (every ``lcnfast`` command, every notebook) does not import
    scipy.optimize, a third of its import time (~0.45 s of ~1.6 s on a 2-core AVX2 host): only
    the image minimum and the local minimisations of lcnfast.analysis need it, and import it
    when they run (tests/test_analysis.py runs them)."""
    code = "import sys, lcnfast; print('scipy.optimize' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_call_lane_kernel_checks_its_arrays_when_the_caller_compiles():
    """call_lane_kernel passes raw data pointers, so it accepts only what the kernel reads
    as its C arrays: C-contiguous float64 arrays of the right dimension, and an integer
    address. Anything else is a typing error naming the argument, at the caller's compile,
    never a wrong pointer at run time."""
    arch = Architecture(32, (3, 3, 3))
    p = Problem(arch, np.ones((32, 4)), np.ones((arch.d_N, 4)), losses.square())
    m = p.model
    n, kv = arch.n_params, m.k_v

    @numba.njit
    def call(kern, W, G):
        _codegen.call_lane_kernel(kern, W, m.A, m.b, m.yy, G, np.empty(W.shape[1]),
                                  np.empty((kv, W.shape[1])))

    kern = _codegen.lane_kernel(arch).address
    W = np.ones((n, 4))
    G = np.empty((n, 4))
    call(kern, W, G)  # the reference for the equal numbers is test_generated_equals_generic
    with pytest.raises(numba.core.errors.TypingError, match="W must be a C-contiguous 2-d"):
        call(kern, np.asfortranarray(np.ones((n, 4))), G)
    with pytest.raises(numba.core.errors.TypingError, match="out_g must be a C-contiguous"):
        call(kern, W, G.astype(np.float32))
    with pytest.raises(numba.core.errors.TypingError, match="kern must be the kernel's address"):
        call(1.5, W, G)


@pytest.mark.parametrize("name", ["_one_flow.dp_step_kern", "_rk45._rk_stages_kern"])
def test_kernel_steps_have_no_reference_counting(name):
    """The generated kernel's Dormand-Prince stages make no call that can return an error, so
    Numba's pruning removes every reference-count operation on their arrays (the reason they
    are separate from the generic steps: see lcnfast._one_flow before grad_kern). A change
    that brings back such a call brings back two atomic operations per array and step
    (~2x slower ``auto``): checked on the optimised LLVM IR of an uncached compile."""
    import importlib

    from lcnfast._jit import JIT

    mod_name, fn_name = name.split(".")
    fn = getattr(importlib.import_module(f"lcnfast.{mod_name}"), fn_name)
    arch = Architecture(32, (3, 3, 3))
    p = Problem(arch, np.ones((32, 4)), np.ones((arch.d_N, 4)), losses.square())
    m = p.model
    n, kv = arch.n_params, m.k_v
    kern = _codegen.lane_kernel(arch).address
    uncached = numba.njit(**{k: v for k, v in JIT.items() if k != "cache"})(fn.py_func)
    if fn_name == "dp_step_kern":
        lanes = 1
        args = (kern, m.A, m.b, m.yy, np.zeros((n, 1)), np.zeros((n, 1)), np.zeros(1),
                np.zeros((kv, 1)), np.zeros((len(arch.k) + 1, kv)), len(arch.k),
                np.zeros((7, n)), *(np.zeros(n) for _ in range(6)), 1e-3)
    else:
        from lcnfast._lanes import LANES as lanes

        Gst, Y, acc, Y_new = np.zeros((7, n, lanes)), *(np.zeros((n, lanes)) for _ in range(3))
        flat = lambda a: a.reshape(-1, n * lanes) if a.ndim == 3 else a.reshape(-1)  # noqa: E731
        args = (kern, m.A, m.b, m.yy, np.full(lanes, 1e-3), Gst, flat(Gst), flat(Y),
                np.zeros(n * lanes), acc, flat(acc), Y_new, flat(Y_new), np.zeros(lanes),
                np.zeros((kv, lanes)))
    uncached(*args)
    sig = uncached.signatures[0]
    ir = uncached.inspect_llvm(sig)
    name = uncached.overloads[sig].fndesc.mangled_name
    (body,) = [f for f in ir.split("\ndefine") if f"@{name}(" in f.split("\n", 1)[0]]
    assert "call void @NRT_" not in body, f"{fn_name} ({lanes} lanes) has reference counting"
