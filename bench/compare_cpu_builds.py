#!/usr/bin/env python3
"""Compare two builds of the native CPU module on the sketch ops, interleaved, in one run.

    python bench/compare_cpu_builds.py BEFORE_DIR AFTER_DIR [OUT_DIR] [--rounds 3] [--calls 2]
                                       [--threads 1] [--label NAME] [--cases a,b]
                                       [--before-name TEXT] [--after-name TEXT]

BEFORE_DIR and AFTER_DIR each hold a built ``_C_cpu*.so`` (e.g. copied from two wheels or
build trees).  Two builds of one extension cannot be loaded into one process, so every
(build, case, round) runs in its own process: one warm-up call, then ``--calls`` timed calls,
each timed by wall clock and by ``time.thread_time()`` of the calling thread (which leaves out
the time the thread waited for a core on a shared machine, but not cache or memory contention).
The builds alternate within every round; the best call over all rounds is reported, and the
ratio before / after of the thread times.  Every process also times one fp32 matmul of fixed
size, so a drift of the machine's speed between processes can be seen in the table.  Both builds
must give the same sketch up to float32 summation order (checked: relative max difference
reported).  Writes OUT_DIR/compare-cpu-builds-<label>-<date>.md (default OUT_DIR:
bench/results/).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import subprocess
import sys
import tempfile

# (name, op, N, T, d_in, d_out, m, k): op "outer" = outer_sketch(a (N,T,d_in), d (N,T,d_out));
# op "sparse" = sparse_sign_sketch(g (N, d_in)) (T, d_out unused)
CASES = [
    ("ResNet18 conv", "outer", 256, 49, 4608, 512, 512, 8),
    ("ResNet18 conv, k = 1", "outer", 256, 49, 4608, 512, 512, 1),
    ("ResNet18 conv, N = 16", "outer", 16, 49, 4608, 512, 512, 8),
    ("GEMM path (T > 64)", "outer", 32, 128, 1024, 1024, 512, 8),
    ("T = 16, 576 -> 1536", "outer", 64, 16, 576, 1536, 512, 8),
    ("T = 3, 768 -> 768", "outer", 256, 3, 768, 768, 512, 8),
    ("T = 1, 768 -> 768", "outer", 256, 1, 768, 768, 512, 8),
    ("small-CNN fc1", "outer", 1000, 1, 1568, 64, 256, 8),
    ("ResNet head", "outer", 2048, 1, 513, 196, 512, 8),
    ("sparse_sign_sketch r = 2^20", "sparse", 64, 0, 1 << 20, 0, 512, 8),
    ("sparse_sign_sketch r = 2^20, k = 1", "sparse", 64, 0, 1 << 20, 0, 512, 1),
]

CHILD = r"""
import glob, importlib.util, json, sys, time, torch
so_dir, case, calls, threads, out_path = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
path = glob.glob(so_dir + "/_C_cpu*.so")[0]
spec = importlib.util.spec_from_file_location("_C_cpu", path)
M = importlib.util.module_from_spec(spec); spec.loader.exec_module(M)
name, op, N, T, d_in, d_out, m, k = case
g = torch.Generator().manual_seed(0)
out = torch.empty(N, m)
if op == "outer":
    a = torch.randn(N, T, d_in, generator=g); d = torch.randn(N, T, d_out, generator=g)
    call = lambda: M.outer_sketch(out.data_ptr(), a.data_ptr(), d.data_ptr(), 0, N, T, d_in, d_out,
                                  T * d_in, d_in, T * d_out, d_out, m, k, 3, 0, False)
else:
    x = torch.randn(N, d_in, generator=g)
    call = lambda: M.sparse_sign_sketch(out.data_ptr(), x.data_ptr(), 0, N, d_in, d_in, m, k, 3, 0, False)
mm = torch.randn(1024, 1024, generator=g)
def timed(f):
    w, c = time.perf_counter(), time.thread_time(); f()
    return time.perf_counter() - w, time.thread_time() - c
call()
res = [timed(call) for _ in range(calls)]
ref = min(timed(lambda: mm @ mm)[1] for _ in range(3))
torch.save(out, out_path)
print(json.dumps({"wall": min(r[0] for r in res), "cpu": min(r[1] for r in res), "matmul_cpu": ref}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("out", nargs="?", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", default="sketch")
    ap.add_argument("--before-name", default=None, help="what the before build is (e.g. its commit); default: its folder")
    ap.add_argument("--after-name", default=None, help="what the after build is; default: its folder")
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names (default: all)")
    args = ap.parse_args()
    for d in (args.before, args.after):
        if not glob.glob(os.path.join(d, "_C_cpu*.so")):
            ap.error(f"no _C_cpu*.so in {d}")
    if args.rounds < 1 or args.calls < 1 or args.threads < 1:
        ap.error("--rounds, --calls and --threads must be >= 1")
    cases = [c for c in CASES if not args.cases or any(s.strip() in c[0] for s in args.cases.split(","))]
    if not cases:
        ap.error(f"no case matches {args.cases!r}")
    os.makedirs(args.out, exist_ok=True)
    import torch  # only for the result check

    from sketchprune.info import cpu_name

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            best = {}
            for rnd in range(args.rounds):
                for tag, so_dir in (("before", args.before), ("after", args.after)):
                    out_path = os.path.join(tmp, f"{tag}.pt")
                    run = subprocess.run([sys.executable, "-c", CHILD, so_dir, json.dumps(case), str(args.calls),
                                          str(args.threads), out_path], capture_output=True, text=True, env=env)
                    if run.returncode != 0:
                        raise SystemExit(f"{case[0]} ({tag}) failed:\n{run.stderr[-3000:]}")
                    r = json.loads(run.stdout.strip().splitlines()[-1])
                    b = best.setdefault(tag, {"wall": float("inf"), "cpu": float("inf"), "matmul_cpu": []})
                    b["wall"], b["cpu"] = min(b["wall"], r["wall"]), min(b["cpu"], r["cpu"])
                    b["matmul_cpu"].append(r["matmul_cpu"])
            x, y = torch.load(os.path.join(tmp, "before.pt")), torch.load(os.path.join(tmp, "after.pt"))
            diff = ((x - y).abs().max() / x.abs().max().clamp_min(1e-30)).item()
            rows.append((case, best, diff))
            print(f"{case[0]}: before {best['before']['cpu']:.4f} s, after {best['after']['cpu']:.4f} s "
                  f"(CPU ratio {best['before']['cpu'] / best['after']['cpu']:.2f}x), rel diff {diff:.1e}", flush=True)

    date = datetime.date.today().isoformat()
    L = [f"# CPU sketch ops: two builds of the native module compared ({args.label})\n",
         f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; {cpu_name()}, "
         f"{args.threads} OpenMP thread(s), torch {torch.__version__}; before = {args.before_name or args.before}, "
         f"after = {args.after_name or args.after}.\n",
         f"Method: see `bench/compare_cpu_builds.py` (one process per build, case and round; {args.rounds} rounds x "
         f"(1 warm-up + {args.calls} timed calls), builds alternating; best call).  CPU = thread time of the calling "
         "thread.  `matmul` = thread time of one fp32 1024^3 matmul in the same processes (median over the "
         "processes, before / after): a check that the machine ran at the same speed for both builds.\n",
         "| case (N, T, d_in, d_out, m, k) | before wall (s) | after wall (s) | before CPU (s) | after CPU (s) | "
         "CPU ratio | matmul before / after (ms) | rel. max diff |",
         "|---|---|---|---|---|---|---|---|"]
    for case, best, diff in rows:
        name, op, N, T, d_in, d_out, m, k = case
        shape = f"({N}, {T}, {d_in}, {d_out}, {m}, {k})" if op == "outer" else f"(N={N}, r={d_in}, m={m}, k={k})"
        bb, aa = best["before"], best["after"]
        med = lambda v: sorted(v)[len(v) // 2] * 1e3  # noqa: E731
        L.append(f"| {name} {shape} | {bb['wall']:.4f} | {aa['wall']:.4f} | {bb['cpu']:.4f} | {aa['cpu']:.4f} | "
                 f"**{bb['cpu'] / aa['cpu']:.2f}x** | {med(bb['matmul_cpu']):.1f} / {med(aa['matmul_cpu']):.1f} | "
                 f"{diff:.1e} |")
    path = os.path.join(args.out, f"compare-cpu-builds-{args.label}-{date}.md")
    tmp_path = path + ".tmp"
    with open(tmp_path, "w") as f:
        f.write("\n".join(L) + "\n")
    os.replace(tmp_path, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
