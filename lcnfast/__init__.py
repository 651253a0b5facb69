"""lcnfast: fast gradient flows of linear convolutional networks.

Public API (see README.md):

- :class:`Architecture` -- ``(d0; k; s)``, Prop. 1.1.
- :mod:`lcnfast.losses` -- the losses of Theorem 3.8.
- :class:`Problem` -- empirical risk, final filter, gradient and Hessian (Numba kernels).
- :mod:`lcnfast.data` -- teacher data and initial filters.
- :func:`gradient_flow`, :func:`gradient_descent` -- many flows at once, as xarray Datasets.
- :func:`to_netcdf`, :func:`open_dataset` -- atomic, compressed netCDF round trip.
- :mod:`lcnfast.analysis` -- limit points (critical? saddle? global? common roots?), rank
  conditions on X X^T and the window Gram, summaries; :mod:`lcnfast.roots` -- layer roots.
"""

from . import _command

_command.quiet_interrupt()  # a Ctrl-C while the rest imports (~1.2 s): see _command

from importlib.metadata import PackageNotFoundError, version

from . import _notice, _numba_cache, _threading_layer

_threading_layer.preload_tbb()  # Numba's prange kernels on TBB where installed: see the module

_numba_cache.purge_stale()  # before any cached kernel is loaded: see _numba_cache
_notice.install_compile_notices()  # a compile of a few seconds or more says so on stderr

from . import analysis, data, losses, roots
from .architecture import Architecture
from .flows import STATUS, gradient_descent, gradient_flow, threads
from .io import open_dataset, to_netcdf
from .problem import Problem

_numba_cache.guard_dispatchers()  # damaged cache entries are dropped and recompiled

try:
    __version__ = version("lcnfast")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "Architecture",
    "Problem",
    "losses",
    "data",
    "analysis",
    "roots",
    "gradient_flow",
    "gradient_descent",
    "threads",
    "STATUS",
    "to_netcdf",
    "open_dataset",
    "__version__",
]
