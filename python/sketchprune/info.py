"""``python -m sketchprune.info``: what was built, what is available, and on which device."""

from __future__ import annotations

import platform

import torch

from . import __version__, _backends, _native


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def _override():
    """The SKETCHPRUNE_BACKEND override, or what is wrong with it (this is the tool to diagnose it)."""
    try:
        return _backends.requested_backend()
    except (ValueError, KeyError) as e:
        return f"invalid: {e}"


def report() -> dict:
    cpu, cuda = _native.cpu_module(), _native.cuda_module()
    info = {
        "sketchprune": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": None,
        "cpu_module": cpu.build_info() if cpu else {"error": _native.load_error("_C_cpu")},
        "cuda_module": cuda.build_info() if cuda else {"error": _native.load_error("_C_cuda")},
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "backend_override": _override(),
        "backends": {},
    }
    if cuda:
        info["cuda_module"]["device_count"] = cuda.device_count()
    if _backends.triton_importable():
        import triton

        info["triton"] = triton.__version__ + (" (interpreter)" if _backends.triton_interpreted() else "")
    for dev in ("cpu", "cuda"):
        where = torch.device(dev) if dev == "cpu" or torch.cuda.is_available() else None
        # with no CUDA device a backend that is otherwise ready cannot run either
        ready = "available" if where is not None else "ready, but no CUDA device is visible to torch"
        info["backends"][dev] = {b: (_backends.unavailable_reason(b, dev, where) or ready)
                                 for b in _backends.BACKENDS}
    return info


def main() -> None:
    try:
        _print(report())
    except BrokenPipeError:  # `sketchprune info | head`: the reader left; no traceback
        import os
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _print(info: dict) -> None:
    print(f"sketchprune {info['sketchprune']}  python {info['python']}  torch {info['torch']} "
          f"(cuda {info['torch_cuda']})  triton {info['triton']}")
    print(f"C++ CPU module : {info['cpu_module']}")
    print(f"CUDA module    : {info['cuda_module']}")
    print(f"CUDA devices   : {info['cuda_devices'] or 'none'}")
    print(f"override       : SKETCHPRUNE_BACKEND={info['backend_override'] or '(auto)'}")
    for dev, table in info["backends"].items():
        print(f"{dev} backends:")
        for b, why in table.items():
            print(f"  {b:7s} {why}")
        if dev in ("cpu", "cuda") and (dev == "cpu" or torch.cuda.is_available()):
            for op in _backends.OPS:
                try:
                    chosen = _backends.select(op, torch.device(dev), warn=False)
                except Exception as exc:  # an explicit override that cannot run here
                    chosen = f"error: {exc}"
                print(f"    {op:20s} -> {chosen}")


if __name__ == "__main__":
    main()
