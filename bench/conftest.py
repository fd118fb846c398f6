"""Benchmark harness shared by bench/bench_*.py (pytest + pytest-benchmark).

Device: ``--sp-device`` or the environment variable ``SKETCHPRUNE_BENCH_DEVICE`` (``cuda``,
``cuda:1``, ``cpu``); default ``cuda`` when torch sees a GPU, else ``cpu``.

Timing
------
* GPU: CUDA events around each call, median over many calls after warm-up (the first call
  also compiles Triton kernels).  For calls under 50 ms, each batch of timed calls starts
  behind a short ``torch.cuda._sleep`` so the host has queued the launches before the GPU
  reaches them: the event times are then GPU time, not Python launch overhead.  When one input set is
  smaller than ~2x the L2 cache, the calls rotate over several independent input sets so
  that inputs are not served from L2.  Afterwards ``benchmark.pedantic`` times the same
  calls followed by ``torch.cuda.synchronize()`` so pytest-benchmark also stores
  host-inclusive wall times ("wall" in the summaries).
* CPU: one timed warm-up call, then ``benchmark.pedantic`` (wall clock, median).

Roofline (session fixture ``roofline``, measured in the same run, on the same device):
* bandwidth: a large device-to-device copy ``dst.copy_(src)`` of random data
  (GPU: up to 1 GiB, CPU: 256 MB), (bytes read + bytes written) / time;
* matmul peak: GPU a bf16 8192^3 matmul, CPU an fp32 2048^3 matmul with the current
  torch thread count; 2*n^3 / time.
GPU: median of 20 CUDA-event timings after warm-up.  CPU: the best of 5-7 wall-clock timings
(a peak; shared CPU runners are noisy).

Every benchmark puts into ``benchmark.extra_info``: op, case, impl, kind
(``sketchprune`` / ``baseline``), backend, device, median_s, GBps, TFLOPs,
frac_bw_roofline, frac_matmul_roofline, floor_s = max(flops / peak, bytes / bw) and
roofline_frac = floor_s / median_s.  All implementations of one case are charged the same
useful flops and bytes (those of the op's definition; see each bench file), so GB/s and
TFLOP/s are effective rates, comparable across implementations.

Options: ``--sp-rounds`` (most pedantic rounds, default 5; fewer for slow calls: about 1 s
of rounds per benchmark on GPU, 3 s on CPU, at least 1 on GPU and 3 on CPU),
``--sp-target-s`` (GPU seconds of event-timed calls per benchmark, default 0.2),
``--sp-deadline`` (unix time after which remaining benchmarks are skipped, so a time-boxed
run still writes its JSON).

Without pytest-benchmark installed, a minimal stand-in (bottom of this file) provides the
``benchmark`` fixture and ``--benchmark-json`` in the same layout.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import re
import statistics
import time

import pytest
import torch

try:
    import sketchprune as sp
    from sketchprune import _backends
except ImportError as exc:  # pragma: no cover - a setup problem, say how to fix it
    raise ImportError(
        f"bench/: cannot import sketchprune ({exc}); install it (pip install .) or run with "
        "PYTHONPATH=<repo>/python"
    ) from exc


# ----------------------------------------------------------------------------- options
def pytest_addoption(parser):
    g = parser.getgroup("sketchprune-bench")
    g.addoption("--sp-device", default=None,
                help="device to benchmark (default: $SKETCHPRUNE_BENCH_DEVICE, else cuda if available, else cpu)")
    g.addoption("--sp-rounds", type=int, default=None,
                help="most pytest-benchmark pedantic rounds per benchmark (default 5)")
    g.addoption("--sp-target-s", type=float, default=0.2,
                help="GPU: seconds of CUDA-event-timed calls per benchmark (default 0.2)")
    g.addoption("--sp-deadline", type=float, default=None,
                help="unix time after which remaining benchmarks are skipped (the JSON is still written)")


def _device_from(config) -> torch.device:
    name = (config.getoption("--sp-device") if config is not None else None) \
        or os.environ.get("SKETCHPRUNE_BENCH_DEVICE", "").strip() \
        or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError(f"benchmark device {name!r} requested but torch sees no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise pytest.UsageError(f"benchmark device {name!r}: only cpu and cuda are supported")
    return dev


_STATE: dict = {"skips": [], "roofline": None, "device": None}


def pytest_configure(config):
    _STATE["config"] = config
    _STATE["device"] = _device_from(config)
    if _STATE["device"].type == "cuda":
        torch.cuda.set_device(_STATE["device"])


def pytest_report_header(config):
    dev = _STATE["device"]
    return [f"sketchprune benchmarks on {dev} ({device_name(dev)}); torch {torch.__version__}, "
            f"threads {torch.get_num_threads()}; backends here: {', '.join(bench_backends(dev.type))}"]


# ----------------------------------------------------------------------------- device facts
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from sketchprune.info import cpu_name

    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def cache_bytes(device: torch.device) -> int:
    """L2 (GPU) or last-level cache (CPU, capped at 64 MiB: VMs report host-wide sizes)."""
    if device.type == "cuda":
        size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        return int(size) or 50 * 2**20
    size = 32 * 2**20
    try:
        for idx in range(4, -1, -1):
            p = f"/sys/devices/system/cpu/cpu0/cache/index{idx}/size"
            if os.path.exists(p):
                txt = open(p).read().strip()
                mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(txt[-1:], 1)
                size = int(txt.rstrip("KMG")) * mult
                break
    except (OSError, ValueError):
        pass
    return min(size, 64 * 2**20)


def n_input_sets(set_bytes: int, device: torch.device, max_sets: int = 16) -> int:
    """How many independent input sets to rotate over so that the inputs of one call are
    not cache-resident from the previous call (1 when one set is >= 2x the cache)."""
    limit = 2 * cache_bytes(device)
    if set_bytes <= 0 or set_bytes >= limit:
        return 1
    return int(min(max_sets, math.ceil(limit / set_bytes) + 1))


def free_bytes(device: torch.device) -> int:
    from sketchprune.budget import free_bytes as _free

    return _free(device)


def fits(device: torch.device, need_bytes: int, frac: float = 0.85) -> bool:
    return need_bytes <= frac * free_bytes(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- backends
def bench_backends(device_type: str) -> list[str]:
    return [b for b in _backends.BACKENDS if backend_skip_reason(b, device_type) is None]


def backend_skip_reason(backend: str, device_type: str) -> str | None:
    why = _backends.unavailable_reason(backend, device_type)
    if why is None and backend == "triton" and device_type == "cpu":
        why = "Triton on CPU runs only in the interpreter (TRITON_INTERPRET=1), which is not worth timing"
    return why


def pytest_generate_tests(metafunc):
    """``backend`` parameter: every sketchprune backend, skipped (with the reason) where it
    cannot run on the benchmark device."""
    if "backend" in metafunc.fixturenames:
        dev = _STATE["device"] or _device_from(metafunc.config)
        params = []
        for b in _backends.BACKENDS:
            why = backend_skip_reason(b, dev.type)
            marks = [pytest.mark.skip(reason=f"backend {b} on {dev.type}: {why}")] if why else []
            params.append(pytest.param(b, id=b, marks=marks))
        metafunc.parametrize("backend", params)


def bench_device() -> torch.device:
    """The benchmark device (known from pytest_configure on, so usable at collection time)."""
    return _STATE["device"] or _device_from(None)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return _STATE["device"]


@pytest.fixture(autouse=True)
def _bench_guard(request):
    deadline = request.config.getoption("--sp-deadline")
    if deadline is not None and time.time() > deadline:
        pytest.skip("time budget of this run (--sp-deadline) exhausted")
    torch.manual_seed(0)
    yield
    gc.collect()
    if _STATE["device"] is not None and _STATE["device"].type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- timing
_SLEEP = {"cycles_per_s": None}


def _sleep_cycles_per_s() -> float:
    """Calibrate torch.cuda._sleep (spins for a number of GPU clock cycles); 0 if unavailable."""
    if _SLEEP["cycles_per_s"] is None:
        try:
            torch.cuda._sleep(1000)
            torch.cuda.synchronize()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            cycles = 20_000_000
            s.record()
            torch.cuda._sleep(cycles)
            e.record()
            torch.cuda.synchronize()
            _SLEEP["cycles_per_s"] = cycles / (s.elapsed_time(e) / 1e3)
        except Exception:
            _SLEEP["cycles_per_s"] = 0.0
    return _SLEEP["cycles_per_s"]


def cuda_event_times(step, reps: int, host_s: float = 0.0, batch: int = 32) -> list[float]:
    """Per-call GPU times (s) of ``reps`` calls of ``step`` measured with CUDA events.

    Calls run in batches; each batch is preceded by a GPU spin long enough for the host to
    queue the whole batch (``host_s`` = host time per call), so that host overhead does not
    show up as GPU idle time between the events."""
    cps = _sleep_cycles_per_s() if host_s > 0 else 0.0
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for b0 in range(0, reps, batch):
        nb = min(batch, reps - b0)
        if cps > 0:
            torch.cuda._sleep(int(cps * min(0.25, 1.3 * host_s * nb + 50e-6)))
        for i in range(b0, b0 + nb):
            starts[i].record()
            step()
            ends[i].record()
        torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]


def _wall_times(step, reps: int, device: torch.device) -> list[float]:
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


# ----------------------------------------------------------------------------- roofline
def _measure_roofline(device: torch.device) -> dict:
    gen = torch.Generator(device=device).manual_seed(1234)
    if device.type == "cuda":
        nbytes = int(min(2**30, free_bytes(device) // 6))
        src = torch.rand(nbytes // 4, device=device, generator=gen)  # random, never zeros
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        torch.cuda.synchronize()
        t_copy = statistics.median(cuda_event_times(lambda: dst.copy_(src), 20))
        copy_bytes = 2 * src.numel() * src.element_size()
        del src, dst
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
        c = torch.empty(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(5):
            torch.mm(a, b, out=c)
        torch.cuda.synchronize()
        t_mm = statistics.median(cuda_event_times(lambda: torch.mm(a, b, out=c), 20))
        del a, b, c
        torch.cuda.empty_cache()
        mm_desc, bw_desc = f"bf16 {n}^3 torch.mm, CUDA events, median of 20", \
            f"dst.copy_(src) of {copy_bytes // 2 / 2**20:.0f} MiB fp32, CUDA events, median of 20"
        timing = "cuda-events"
    else:
        numel = 64 * 2**20  # 256 MB of fp32
        src = torch.rand(numel, generator=gen)
        dst = torch.empty_like(src)
        dst.copy_(src)
        t_copy = min(_wall_times(lambda: dst.copy_(src), 7, device))
        copy_bytes = 2 * numel * 4
        del src, dst
        n = 2048
        a = torch.randn(n, n, generator=gen)
        b = torch.randn(n, n, generator=gen)
        c = torch.empty(n, n)
        for _ in range(2):
            torch.mm(a, b, out=c)
        t_mm = min(_wall_times(lambda: torch.mm(a, b, out=c), 5, device))
        mm_desc = f"fp32 {n}^3 torch.mm, {torch.get_num_threads()} threads, best wall time of 5"
        bw_desc = "dst.copy_(src) of 256 MB fp32, best wall time of 7"
        timing = "wall"
    return {
        "device": device_name(device),
        "device_type": device.type,
        "bw_GBps": copy_bytes / t_copy / 1e9,
        "matmul_TFLOPs": 2 * n**3 / t_mm / 1e12,
        "matmul_dtype": "bfloat16" if device.type == "cuda" else "float32",
        "bw_method": bw_desc,
        "matmul_method": mm_desc,
        "timing": timing,
        "threads": torch.get_num_threads(),
    }


@pytest.fixture(scope="session")
def roofline(device) -> dict:
    if _STATE["roofline"] is None:
        _STATE["roofline"] = _measure_roofline(device)
    return _STATE["roofline"]


# ----------------------------------------------------------------------------- measure
def _rotating(fns):
    fns = list(fns) if isinstance(fns, (list, tuple)) else [fns]
    state = {"i": 0}

    def step():
        f = fns[state["i"]]
        state["i"] = (state["i"] + 1) % len(fns)
        return f()

    return step, len(fns)


def measure(benchmark, fn, *, flops: float, bytes: float, roofline: dict, device: torch.device,
            rounds: int | None = None, op: str = "", case: str = "", impl: str = "",
            kind: str = "sketchprune", backend: str | None = None, note: str | None = None) -> dict:
    """Time ``fn`` (a callable, or a list of callables over independent input sets that are
    rotated call by call) and record the result in ``benchmark.extra_info``.

    ``flops`` / ``bytes``: the useful work of one call (the same for every implementation
    of a case).  Returns the extra_info dict."""
    config = _STATE.get("config")

    def opt(name, default):
        value = config.getoption(name) if config is not None else None
        return default if value is None else value

    max_rounds = rounds or opt("--sp-rounds", None) or 5
    step, n_sets = _rotating(fn)
    benchmark.group = f"{op} {case}".strip() or None

    # warm-up (also compiles Triton kernels / fills allocator caches) and a time estimate
    for _ in range(n_sets if device.type == "cuda" else 1):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        t_est = time.perf_counter() - t0

    info = {"op": op, "case": case, "impl": impl, "kind": kind, "backend": backend,
            "device": device_name(device), "device_type": device.type, "n_input_sets": n_sets,
            "flops": float(flops), "bytes": float(bytes)}
    if note:
        info["note"] = note

    if device.type == "cuda":
        host_s = 0.0
        if t_est < 0.05:
            # host time of one call (queue empty): how far the GPU must be held back so that
            # launch overhead is hidden (irrelevant for calls that take longer than this)
            host = []
            for _ in range(3):
                sync(device)
                t0 = time.perf_counter()
                step()
                host.append(time.perf_counter() - t0)
            sync(device)
            host_s = min(host)
            t_est = min(t_est, statistics.median(_wall_times(step, 2, device)))
        target = opt("--sp-target-s", 0.2)
        reps = int(min(500, max(5 if t_est < 0.1 else 3, math.ceil(target / max(t_est, 1e-7)))))
        times = cuda_event_times(step, reps, host_s=host_s)
        median_s = statistics.median(times)
        info.update(timing="cuda-events", reps=reps, host_s=host_s, min_s=min(times), max_s=max(times))

        def timed():
            step()
            torch.cuda.synchronize(device)

        n_rounds = int(max(1, min(max_rounds, math.ceil(1.0 / max(t_est, 1e-7)))))
        benchmark.pedantic(timed, rounds=n_rounds, iterations=1, warmup_rounds=1 if t_est < 0.5 else 0)
    else:
        # the warm-up call above is the warm-up round
        n_rounds = int(max(min(3, max_rounds), min(max_rounds, math.ceil(3.0 / max(t_est, 1e-7)))))
        benchmark.pedantic(step, rounds=n_rounds, iterations=1, warmup_rounds=0)
        stats = getattr(benchmark, "stats", None)
        median_s = stats.stats.median if stats is not None else t_est
        info.update(timing="wall", reps=n_rounds)

    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        info["wall_median_s"] = stats.stats.median
    bw = roofline["bw_GBps"] * 1e9
    peak = roofline["matmul_TFLOPs"] * 1e12
    floor_s = max(flops / peak, bytes / bw)
    info.update(
        median_s=median_s,
        GBps=bytes / median_s / 1e9,
        TFLOPs=flops / median_s / 1e12,
        frac_bw_roofline=(bytes / median_s) / bw,
        frac_matmul_roofline=(flops / median_s) / peak,
        floor_s=floor_s,
        roofline_frac=floor_s / median_s,
        roofline_bw_GBps=roofline["bw_GBps"],
        roofline_matmul_TFLOPs=roofline["matmul_TFLOPs"],
        torch_threads=torch.get_num_threads(),
    )
    benchmark.extra_info.update(info)
    return info


# ----------------------------------------------------------------------------- probes
_PROBES: dict = {}


def probe(key, fn) -> str | None:
    """Run ``fn()`` once (cached by key); None when it worked, else a one-line reason."""
    if key not in _PROBES:
        try:
            fn()
            _PROBES[key] = None
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            msg = msg.split(". ")[0]
            _PROBES[key] = f"{type(exc).__name__}: {msg[:160]}"
    return _PROBES[key]


# ----------------------------------------------------------------------------- JSON metadata
def pytest_runtest_logreport(report):
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _STATE["skips"].append({"test": report.nodeid, "reason": re.sub(r"^Skipped: ", "", str(reason))})


def _versions() -> dict:
    out = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version(),
           "sketchprune": getattr(sp, "__version__", None), "triton": None}
    if _backends.triton_importable():
        try:
            import triton

            out["triton"] = triton.__version__
        except Exception as exc:  # pragma: no cover
            out["triton"] = f"import failed: {exc}"
    return out


def _sketchprune_machine_info(config) -> dict:
    dev = _STATE["device"] or _device_from(config)
    info = {"device": str(dev), "device_name": device_name(dev), "versions": _versions(),
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "backends": {b: (backend_skip_reason(b, dev.type) or "available") for b in _backends.BACKENDS},
            "roofline": _STATE["roofline"]}
    try:
        from sketchprune import _native

        mods = {}
        for name, mod in (("_C_cpu", _native.cpu_module()), ("_C_cuda", _native.cuda_module())):
            mods[name] = mod.build_info() if mod is not None else {"error": _native.load_error(name)}
        info["native"] = mods
    except Exception as exc:  # pragma: no cover
        info["native"] = {"error": str(exc)}
    return info


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["sketchprune"] = _sketchprune_machine_info(config)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["sketchprune_skips"] = list(_STATE["skips"])
    output_json["sketchprune_roofline"] = _STATE["roofline"]


# ----------------------------------------------------------------------------- no pytest-benchmark?
# A GPU machine may have pytest but not pytest-benchmark (and no network to install it).
# Then a minimal stand-in provides the ``benchmark`` fixture (pedantic, extra_info, group,
# stats.median) and ``--benchmark-json`` in the same JSON layout, so summarize.py works.
try:
    import pytest_benchmark  # noqa: F401

    HAVE_PYTEST_BENCHMARK = True
except ImportError:
    HAVE_PYTEST_BENCHMARK = False

if not HAVE_PYTEST_BENCHMARK:
    import datetime as _dt
    import json as _json

    class _Stats:
        def __init__(self, data):
            self.data = list(data)
            srt = sorted(self.data)
            n = len(srt)
            self.min, self.max = srt[0], srt[-1]
            self.mean = sum(srt) / n
            self.median = statistics.median(srt)
            self.stddev = statistics.stdev(srt) if n > 1 else 0.0
            self.q1, self.q3 = (srt[n // 4], srt[(3 * n) // 4]) if n > 1 else (srt[0], srt[0])
            self.iqr = self.q3 - self.q1

        def as_dict(self):
            return {"min": self.min, "max": self.max, "mean": self.mean, "stddev": self.stddev,
                    "rounds": len(self.data), "median": self.median, "iqr": self.iqr, "q1": self.q1,
                    "q3": self.q3, "ops": 1 / self.mean if self.mean else 0.0, "total": sum(self.data),
                    "data": self.data, "iterations": 1}

    class _Meta:
        def __init__(self, data):
            self.stats = _Stats(data)

    class _FallbackBenchmark:
        def __init__(self, node):
            self.name, self.fullname = node.name, node.nodeid
            self.param = getattr(getattr(node, "callspec", None), "id", None)
            self.params = {k: str(v) for k, v in getattr(getattr(node, "callspec", None), "params", {}).items()}
            self.group, self.extra_info, self.stats = None, {}, None

        def pedantic(self, target, args=(), kwargs=None, setup=None, teardown=None, rounds=1,
                     warmup_rounds=0, iterations=1):
            kwargs = kwargs or {}
            for _ in range(warmup_rounds):
                target(*args, **kwargs)
            data = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(iterations):
                    result = target(*args, **kwargs)
                data.append((time.perf_counter() - t0) / iterations)
            self.stats = _Meta(data)
            return result

        def as_dict(self):
            return {"group": self.group, "name": self.name, "fullname": self.fullname, "params": self.params,
                    "param": self.param, "extra_info": self.extra_info, "options": {"timer": "perf_counter"},
                    "stats": self.stats.stats.as_dict()}

    _FALLBACK: list = []

    def _fallback_addoption(parser):
        g = parser.getgroup("benchmark (stand-in: pytest-benchmark is not installed)")
        g.addoption("--benchmark-json", default=None, help="write the results as JSON")
        g.addoption("--benchmark-columns", default=None, help="ignored by the stand-in")
        g.addoption("--benchmark-disable", action="store_true", default=False, help="ignored by the stand-in")

    _orig_addoption = pytest_addoption

    def pytest_addoption(parser):  # noqa: F811 - extends the definition above
        _orig_addoption(parser)
        _fallback_addoption(parser)

    @pytest.fixture
    def benchmark(request):
        b = _FallbackBenchmark(request.node)
        yield b
        if b.stats is not None:
            _FALLBACK.append(b)

    def pytest_sessionfinish(session, exitstatus):
        path = session.config.getoption("--benchmark-json")
        if not path or not _FALLBACK:
            return
        out = {"machine_info": {"node": platform.node(), "python_version": platform.python_version(),
                                "sketchprune": _sketchprune_machine_info(session.config)},
               "commit_info": {}, "benchmarks": [b.as_dict() for b in _FALLBACK],
               "datetime": _dt.datetime.now(_dt.timezone.utc).isoformat(),
               "version": "sketchprune-bench stand-in (pytest-benchmark not installed)",
               "sketchprune_skips": list(_STATE["skips"]), "sketchprune_roofline": _STATE["roofline"]}
        with open(path, "w") as fh:
            _json.dump(out, fh, indent=1)
        print(f"\nWrote benchmark data in: {path} (pytest-benchmark stand-in)")
