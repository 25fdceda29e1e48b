"""Compile the analysis kernels ahead of their first use, in a background thread.

numba compiles each kernel on its first call (seconds each, mostly in LLVM, which releases the GIL) and caches
it (``cache=True``, in ``__pycache__`` or numba's user cache). On a fresh install the first run pays every
compilation in turn; :func:`precompile` compiles them while the caller does other work (the demo synthesizes
and converts its source), with the exact signatures the passes call them with, so that the passes (and the
workers of a local cluster, which read numba's cache) find them compiled. Compiling by signature ahead of time
gives the same machine code as compiling on first call. numba compiles under one process-wide lock, so the demo
hands part of the list to a child process (``python -m filtershift.stats.kernels NAME ...``) that fills the same
cache on the second core.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("filtershift.stats")


def array(dtype: str, ndim: int, readonly: bool = False):
    """numba's type of a C-contiguous array (the layout every kernel is called with); the weights the passes
    read from a store are read-only."""
    from numba import types

    return types.Array(getattr(types, dtype), ndim, "C", readonly=readonly)


def analysis_kernels() -> list:
    """(kernel, signature) of the three passes (the third with its 2D density), in the order a report first
    calls them, then the JS and W1 matrix kernels of the drift analyses."""
    from filtershift.metrics import kernels as metric_kernels
    from filtershift.stats import grouping, histograms, moments

    w, idx = array("float32", 2, readonly=True), array("int64", 1)
    f1, f2, f3 = array("float64", 1), array("float64", 2), array("float64", 3)
    i2, i3, b1 = array("int64", 2), array("int64", 3), array("boolean", 1)
    return [
        (moments.moments_kernel, (w, idx, idx, f2, f3, f2, f3, f1, f1, f1, f1)),
        (grouping.group_add_kernel, (idx, idx, i2, i2)),
        (grouping.group_add_kernel, (idx, idx, f2, f2)),
        (moments.range_kernel, (w, idx, f1, f2, f2, f2)),
        (moments.sparsity_kernel, (w, idx, f2, f1, b1, b1, idx, idx, f2, f3)),
        (histograms.hist_kernel, (w, idx, f1, f2, f1, f1, i3, i3, idx, f1, idx, i3)),
        *metric_kernels.signatures(),
    ]


def precompile(kernels: list | None = None, *, child: tuple = ()) -> threading.Thread:
    """Start a daemon thread that compiles (or loads from numba's cache) each (kernel, signature) of
    ``kernels`` (default :func:`analysis_kernels`) in order; join it before the work that needs them. A failure
    is logged and left to the first real call, which raises it where it matters.

    ``child`` names analysis kernels (``"hist_kernel"``, ...) that a child process compiles meanwhile into
    numba's cache: numba compiles under one lock, so one process uses one core, and a second process uses the
    second. The thread then loads them from the cache (or compiles them itself if the child failed)."""
    def run():
        proc = _spawn(child) if child else None
        try:
            for kernel, signature in kernels if kernels is not None else analysis_kernels():
                kernel.compile(signature)
            if proc is not None:
                if proc.wait() != 0:
                    log.debug("the child process compiling %s exited with %s", ", ".join(child), proc.returncode)
                for kernel, signature in analysis_kernels():
                    if kernel.__name__ in child:
                        kernel.compile(signature)
        except Exception as exc:  # noqa: BLE001 - the real call compiles again and reports the error
            log.debug("precompiling the kernels failed: %s", exc)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()

    thread = threading.Thread(target=run, name="filtershift-precompile", daemon=True)
    thread.start()
    return thread


def _spawn(names: tuple):
    """A child process compiling the analysis kernels ``names`` into numba's cache (this module's ``main``)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "filtershift.stats.kernels", *names],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(names: list) -> int:
    """Compile the analysis kernels ``names`` into numba's cache; 2 if a name is unknown."""
    known = {kernel.__name__ for kernel, _ in analysis_kernels()}
    if not set(names) <= known:
        return 2
    for kernel, signature in analysis_kernels():
        if kernel.__name__ in names:
            kernel.compile(signature)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
