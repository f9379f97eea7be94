"""Vector compression as pure functions: LVQ codes (``lvq``), LeanVec projections (``leanvec``), and the
``Codec`` that composes them into something an index holds without branching on types (``codec``).

Nothing here is imported by ``engine/__init__``; importing a submodule does not compile numba kernels.
"""
