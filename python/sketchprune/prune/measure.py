"""Measuring what pruning buys and costs: forward latency, inference memory, pruning peak memory.

Inference (:func:`measure_forward`), the same way for the dense and the pruned model on the same
input (batch 1 x ``seq_len`` tokens, no KV cache, under ``torch.no_grad``):

* ``latency_s``: the shortest wall time of ``repeats`` forward passes after ``warmup`` untimed
  ones (the least disturbed by other work on the machine; ``latency_median_s`` and every run are
  reported too; CUDA: synchronised before and after each);
* ``peak_memory_bytes = weights_bytes + activation_peak_bytes``: the bytes of the model's
  parameters and buffers plus the peak of the memory torch allocates during one forward pass.
  CUDA: ``torch.cuda.max_memory_allocated()`` minus the allocation before the pass (after
  ``reset_peak_memory_stats``).  CPU: torch's profiler with ``profile_memory=True`` records every
  CPU allocation and free of the pass; the peak of their running sum is the activation peak.
  (Process RSS is not used for the CPU: the C allocator keeps freed pages, so RSS deltas depend
  on what ran before; ``tracemalloc`` does not see torch's allocations at all.)

Pruning (:class:`PeakMemory`): CUDA: ``max_memory_allocated()`` over the pruning (reset first);
CPU on Linux: the process's peak resident set size over the pruning -- the high-water mark
``VmHWM`` of ``/proc/self/status`` after resetting it through ``/proc/self/clear_refs`` -- which
includes the model itself; elsewhere ``resource.getrusage`` ``ru_maxrss`` (the peak since the
process started).  Each result says which method produced it.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import statistics
import sys
import time

import torch

__all__ = ["weights_bytes", "measure_forward", "PeakMemory"]


def weights_bytes(model) -> int:
    """Bytes of the model's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _accepts(model, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for the block (C++ code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_activation_peak(run) -> tuple[int | None, str]:
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError as e:  # pragma: no cover - depends on the torch build
        return None, f"unavailable ({e})"
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _native_stderr_silenced():  # the profiler's native start/stop log lines
        prof.__enter__()
    try:
        run()
    finally:
        with _native_stderr_silenced():
            prof.__exit__(None, None, None)
    allocs, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            allocs.append((e.start_time_ns, int(e.extra_fields.alloc_size)))
        stack.extend(e.children)
    cur = peak = 0
    for _, n in sorted(allocs):
        cur += n
        peak = max(peak, cur)
    return peak, "torch profiler (profile_memory): peak of the running sum of CPU allocations in one pass"


@torch.no_grad()
def measure_forward(model, input_ids: torch.Tensor, repeats: int = 3, warmup: int = 1) -> dict:
    """Latency and peak memory of one forward pass of ``model`` on ``input_ids`` (see the module doc)."""
    dev = next(model.parameters()).device
    x = input_ids.to(dev)
    if x.dim() == 1:
        x = x[None]
    was_training = model.training
    model.eval()

    kwargs = {"use_cache": False} if _accepts(model, "use_cache") else {}

    def run():
        model(input_ids=x, **kwargs)

    try:
        for _ in range(warmup):
            run()
        times = []
        for _ in range(max(1, repeats)):
            _sync(dev)
            t0 = time.perf_counter()
            run()
            _sync(dev)
            times.append(time.perf_counter() - t0)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            run()
            _sync(dev)
            act, method = torch.cuda.max_memory_allocated(dev) - base, "torch.cuda.max_memory_allocated over one pass"
        else:
            act, method = _cpu_activation_peak(run)
    finally:
        model.train(was_training)
    w = weights_bytes(model)
    return {"latency_s": min(times), "latency_median_s": statistics.median(times), "latency_runs_s": times,
            "weights_bytes": w,
            "activation_peak_bytes": act, "peak_memory_bytes": None if act is None else w + act,
            "memory_method": method, "input_shape": list(x.shape), "device": str(dev)}


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
        return int(m.group(1)) if m else None
    except OSError:
        return None


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.peak_bytes`` and ``pm.method``."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self.method = ""
        self._reset = False

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS to the current RSS (Linux >= 4.0)
            self._reset = _status_kib("VmHWM") is not None
        except OSError:
            self._reset = False
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            _sync(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            self.method = "torch.cuda.max_memory_allocated during pruning (includes what of the model is on the device)"
        elif self._reset:
            self.peak_bytes = _status_kib("VmHWM") * 1024
            self.method = "peak RSS of the process during pruning (VmHWM after /proc/self/clear_refs; includes the model)"
        else:
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_bytes = int(rss if sys.platform == "darwin" else rss * 1024)
            self.method = "peak RSS of the process since it started (getrusage ru_maxrss)"
        return False
