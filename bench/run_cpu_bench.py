#!/usr/bin/env python3
"""Run the CPU benchmarks and write the summary.

    python bench/run_cpu_bench.py [OUT_DIR] [-- extra pytest arguments]

Runs ``pytest bench/ --benchmark-json`` on the CPU (``--sp-device cpu``) with the current
Python, then ``bench/summarize.py OUT_DIR <json>``, which writes
``OUT_DIR/<cpu-slug>-<date>.{json,md}``.  OUT_DIR defaults to bench/results/.  Uses the
installed sketchprune; when none is importable, the source tree's python/ is put on
PYTHONPATH (then only what is built in place, usually the torch backend, runs).
Exit status: pytest's (non-zero when a benchmark failed), after summarizing what ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    if len(argv) > 1 or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    out_dir = Path(argv[0]) if argv else HERE / "results"

    env = dict(os.environ)
    env.setdefault("SKETCHPRUNE_BENCH_DEVICE", "cpu")
    env.pop("TRITON_INTERPRET", None)  # interpreted Triton is not worth timing
    probe = subprocess.run([sys.executable, "-c", "import sketchprune"], cwd=REPO, env=env,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "python"), env.get("PYTHONPATH")) if p)
        print(f"run_cpu_bench: sketchprune is not installed; using the source tree ({REPO / 'python'})")

    with tempfile.TemporaryDirectory(prefix="sketchprune-bench-") as tmp:
        raw = Path(tmp) / "cpu.json"
        cmd = [sys.executable, "-m", "pytest", str(HERE), "-q", "-ra", "--sp-device", "cpu",
               f"--benchmark-json={raw}", "--benchmark-columns=median,min,max,rounds", *extra]
        print("+", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
        print(f"run_cpu_bench: pytest finished with status {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
        if not raw.exists():
            print("run_cpu_bench: no benchmark JSON was written (no benchmark ran?)", file=sys.stderr)
            return rc or 1
        sumrc = subprocess.run([sys.executable, str(HERE / "summarize.py"), str(out_dir), str(raw)], cwd=REPO).returncode
    return rc or sumrc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
