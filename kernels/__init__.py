"""Triton kernels of sketchprune (installed as ``sketchprune.kernels``).

One module per op; each exports a ``launch_<op>`` function that does only shape arithmetic
and launches through ``torch.library.wrap_triton`` so that ``torch.compile`` can trace it.
The op semantics are those of docs/native_abi.md; the sparse-sign sketch is defined by the
hash of csrc/common/sketch_hash.h, whose Triton twin is ``_hash.py``.
"""
