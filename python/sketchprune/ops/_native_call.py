"""Calling the compiled modules with tensors turned into integers (docs/native_abi.md)."""

from __future__ import annotations

import torch

from .. import _native


def module_for(device: torch.device):
    mod = _native.cuda_module() if device.type == "cuda" else _native.cpu_module()
    if mod is None:  # the registry checked availability; this is a programming error
        raise RuntimeError(f"sketchprune: native module for {device.type} is not built")
    return mod


def call(fn_name: str, device: torch.device, *args) -> None:
    """Run ``fn_name`` of the device's native module; CUDA gets (device, stream) appended."""
    mod = module_for(device)
    fn = getattr(mod, fn_name)
    if device.type == "cuda":
        with torch.cuda.device(device):
            fn(*args, *_native.stream_args(device))
    else:
        fn(*args)
