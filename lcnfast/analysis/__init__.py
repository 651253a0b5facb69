"""Limit points and rank conditions (issue 4): what did the gradient flows converge to?

Public functions
----------------
:func:`classify_points`
    Classify any batch of parameter vectors (K, n_params): criticality, the Hessian spectrum
    modulo the rescaling symmetry of Lemma 3.3, a label (``LABELS``: minimum / strict saddle /
    degenerate / not critical / non-finite), the function-space picture (final filter, loss on
    the data, convex minimum, gaps), ``is_global`` against the global minimum over w (convex
    minimum or the computed minimum over the image of pi, :mod:`.reference`), the roots of
    the layer polynomials (eq. 2.1) with common roots and multiplicities, and the singular
    values of the Jacobian of pi. Returns an :class:`xarray.Dataset` over ``flow``.
:func:`classify`
    The same for ``w_final`` of a flow Dataset (lcnfast.flows schema), merged into it together
    with the flows' invariants (balancedness drift, loss increases) and status (label
    ``not_converged``, diverged flows ``non_finite``, the integrator's ``grad_floor``). Never
    recomputes flows.
:func:`rank_report`, :func:`lemma36_bound`
    Rank conditions on the data (X X^T, the window Gram A) and the bound of Lemma 3.6 /
    Corollary 3.7 on ||v||_1, with the observed ``v_l1_max`` of a flow Dataset.
:func:`summarize`, :func:`check_prop51`
    A small table per label, and the study-level test of [7, Prop. 5.1].
:func:`symmetry_directions`, :func:`convex_minimum`, :func:`image_minimum`, :func:`loss_on_data`
    Building blocks (orthonormal basis of the rescaling orbit; the convex function-space
    problem; the global minimum over the image of pi by multistart; the loss on the data).

Conventions and tolerances (all keyword arguments, recorded in the output's attributes)
--------------------------------------------------------------------------------------
``grad_tol`` (absolute, default 1e-6)
    A point is critical when ``||grad L(w)||_2 <= grad_tol``. Absolute because L is the
    paper's unnormalised risk (no 1/m): use the flows' own stopping tolerance, or larger.
``eig_tol`` (relative, default 1e-6)
    An eigenvalue of the projected Hessian *at the balanced point of the orbit* (see below)
    counts as zero when ``|lambda| <= max(eig_tol * rho, g^(2/3), eps L(v=0))``, ``rho`` =
    largest |eigenvalue| there, g = ``||grad L(w)||``. At a distance d from an exact critical
    point eigenvalues move by O(d); along a direction where L is quartic the eigenvalue at
    gradient norm g is O(g^(2/3)): the absolute floor calls such directions zero, and keeps a
    Hessian that vanishes as a whole (an l_p interpolating limit, p >= 4) from being judged
    against its own rounding. Raise ``eig_tol`` when ``grad_tol`` is large. The relative part
    cannot tell an ill-conditioned minimum from a degenerate point: a strict minimum with
    ``lambda_min / rho < eig_tol`` (e.g. on data with a nearly singular window Gram, where
    ~3e-8 was seen) is labelled ``degenerate`` (study reports name such limits); refine the
    limit (a Newton-converged flow: ``rosenbrock``/``auto``) and lower ``eig_tol`` to decide.
``gap_tol`` (relative, default 1e-6)
    ``L(w) - L_ref <= gap_tol * L_scale`` with ``L_scale = L(v = 0)`` (the loss of the zero
    network; ``||Y||_F^2`` for the square loss; 1 if that is 0). Used for ``is_global``,
    ``attains_convex_min`` and ``reached_best``.
``root_tol`` (chordal distance, default 1e-4)
    Roots closer than this are the same (multiplicities, common roots; :mod:`lcnfast.roots`).
    Multiple roots are computed only to about eps^(1/mu) and limits of flows only to the
    accuracy the flow reached, hence the loose default; ``min_root_distance`` is reported as a
    continuous measure so studies need not rely on the threshold.
``jac_tol`` (relative, default 1e-6)
    Rank of the Jacobian of pi: singular values above ``jac_tol * sigma_max`` count. The
    Jacobian is taken at the *normalised* filters ``w^(i) / ||w^(i)||``, which changes neither
    its rank nor the roots but removes the scale imbalance of unbalanced points (J(w) times a
    positive diagonal). For stride 1, J is a generalised Sylvester matrix of the layer
    polynomials: its rank is k_v minus the degree of their common factors, and near a
    coincidence sigma_min shrinks with the root distances (like their *product* when several
    roots of different layers cluster), so ``jac_sv`` and ``min_root_distance`` complement
    each other.
``zero_filter_tol`` (relative, default 1e-12)
    A filter is zero when ``||w^(i)|| <= zero_filter_tol * max_j ||w^(j)||``, and at critical
    points near the zero-filter set (where the rescaling orbit is not flat, test tolerance
    ``sqrt(eig_tol)``) when at most twice the geometric mean filter norm: see
    :func:`lcnfast.analysis.symmetry.orbit_spectra`.

Modules: :mod:`.points` (labels, classify_points, loss values), :mod:`.datasets` (classify,
not_converged, grad_floor), :mod:`.symmetry` (orbit, projected spectrum, the zero-filter
rule), :mod:`.function_space` (convex and image minima, loss on the data), :mod:`.reference`
(``is_global`` and its reference), :mod:`.rank`, :mod:`.summary`.
"""

from ._common import DEFAULTS
from .datasets import LOSS_INCREASE_EPS, classify
from .function_space import ImageMinimum, convex_minimum, image_minimum, loss_on_data
from .points import LABELS, classify_points
from .rank import _h as _h  # the h(L) of Lemma 3.6, tested directly
from .rank import lemma36_bound, rank_report
from .summary import check_prop51, summarize
from .symmetry import symmetry_directions

__all__ = [
    "DEFAULTS",
    "LABELS",
    "LOSS_INCREASE_EPS",
    "ImageMinimum",
    "check_prop51",
    "classify",
    "classify_points",
    "convex_minimum",
    "image_minimum",
    "lemma36_bound",
    "loss_on_data",
    "rank_report",
    "summarize",
    "symmetry_directions",
]
