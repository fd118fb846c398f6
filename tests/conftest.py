"""Test setup: on a machine without a GPU, Triton kernels run through the interpreter.

TRITON_INTERPRET must be set before triton is first imported (sketchprune imports it when
registering its Triton ops), so it is decided here, before anything imports sketchprune.
"""

import os
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.setdefault("SKETCHPRUNE_POISON", "1")  # new outputs start as NaN: unwritten elements show

sys.path.insert(0, os.path.dirname(__file__))
