#!/usr/bin/env python3
"""Merge pytest-benchmark JSON files from bench/ into a dated summary.

    python bench/summarize.py [OUT_DIR] RUN.json [RUN.json ...]

OUT_DIR defaults to bench/results/ (next to this script); it is taken to be the first
argument when that argument does not end in ``.json``.  For each device found in the inputs
it writes

* ``OUT_DIR/<device-slug>-<YYYY-MM-DD>.json``: the merged raw pytest-benchmark data plus
  device, date, torch / triton / sketchprune versions, and the roofline of every run;
* ``OUT_DIR/<device-slug>-<YYYY-MM-DD>.md``: one markdown table per op (case, implementation,
  median time, GB/s, TFLOP/s, fraction of the roofline, speed-up against the strongest
  baseline of the same case and run), a headline table, and the skipped benchmarks.

Only the standard library is used, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
from pathlib import Path

OP_ORDER = ["cov_accumulate_", "cross_accumulate_", "sparse_sign_sketch", "outer_sketch", "gather_slices"]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# (device type, op, implementation, baseline, required speed-up): stated project targets
TARGETS = [("cpu", "sparse_sign_sketch", "sketchprune[cpu]", "dense_gaussian_stored", 5.0)]


def slugify(name: str) -> str:
    s = re.sub(r"\(r\)|\(tm\)", "", name.lower())
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    return s or "unknown-device"


def fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "—"
    if x == 0:
        return "0"
    if abs(x) < 10 ** -digits:
        return f"{x:.2g}"
    return f"{x:.{digits}f}"


def fmt_detail(v) -> str:
    """One value of a benchmark's ``details`` dict: floats to 4 significant digits, dicts item by
    item, everything else as is."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {fmt_detail(x)}" for k, x in v.items()) + "}"
    return str(v)


def fmt_pct(x: float | None) -> str:
    if x is None:
        return "—"
    if x == 0:
        return "0"
    return f"{100 * x:.1f}%" if x >= 0.001 else f"{100 * x:.2g}%"


def load(paths: list[Path]) -> list[dict]:
    runs = []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"summarize: skipping {p}: {exc}", file=sys.stderr)
            continue
        if "benchmarks" not in data:
            print(f"summarize: skipping {p}: not a pytest-benchmark JSON file", file=sys.stderr)
            continue
        data["_source"] = str(p)
        runs.append(data)
    return runs


def run_device(run: dict) -> str:
    sp_info = (run.get("machine_info") or {}).get("sketchprune") or {}
    if sp_info.get("device_name"):
        return sp_info["device_name"]
    for b in run["benchmarks"]:
        dev = (b.get("extra_info") or {}).get("device")
        if dev:
            return dev
    return (run.get("machine_info") or {}).get("cpu", {}).get("brand_raw") or "unknown device"


def run_roofline(run: dict) -> dict | None:
    return run.get("sketchprune_roofline") or ((run.get("machine_info") or {}).get("sketchprune") or {}).get("roofline")


def rows_of(runs: list[dict]) -> list[dict]:
    rows = []
    for ri, run in enumerate(runs):
        for b in run["benchmarks"]:
            e = b.get("extra_info") or {}
            if "op" not in e or "median_s" not in e:
                continue
            rows.append({**e, "run": ri, "name": b.get("name"), "wall_median_s": (b.get("stats") or {}).get("median"),
                         "rounds": (b.get("stats") or {}).get("rounds")})
    return rows


def op_key(op: str):
    return (OP_ORDER.index(op) if op in OP_ORDER else len(OP_ORDER), op)


def group_cases(rows: list[dict]) -> dict:
    """{op: {(case, run): [rows sorted by median]}} keeping first-seen case order."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["op"], {}).setdefault((r["case"], r["run"]), []).append(r)
    for cases in out.values():
        for lst in cases.values():
            lst.sort(key=lambda r: r["median_s"])
    return dict(sorted(out.items(), key=lambda kv: op_key(kv[0])))


def best_baseline(lst: list[dict]) -> dict | None:
    bases = [r for r in lst if r.get("kind") == "baseline"]
    return min(bases, key=lambda r: r["median_s"]) if bases else None


def versions_of(runs: list[dict]) -> dict:
    for run in runs:
        v = ((run.get("machine_info") or {}).get("sketchprune") or {}).get("versions")
        if v:
            return v
    return {}


def render_md(device: str, date: str, runs: list[dict], rows: list[dict], skips: list[dict]) -> str:
    is_gpu = any(r.get("device_type") == "cuda" for r in rows) or any(
        (run_roofline(r) or {}).get("device_type") == "cuda" for r in runs)
    v = versions_of(runs)
    commit = next((run.get("commit_info") for run in runs if run.get("commit_info")), {}) or {}
    lines = [f"# sketchprune benchmarks: {device} ({date})", ""]
    vers = ", ".join(f"{k} {v[k]}" for k in ("sketchprune", "torch", "torch_cuda", "triton", "python") if v.get(k))
    if vers:
        lines.append(f"Versions: {vers}.")
    if commit.get("id") and commit["id"] != "unknown":
        lines.append(f"Commit: `{commit['id'][:12]}`{' (with uncommitted changes)' if commit.get('dirty') else ''}.")
    native = next((((run.get("machine_info") or {}).get("sketchprune") or {}).get("native") for run in runs), None)
    if native:
        lines.append("Native modules: " + "; ".join(f"{k}: {json.dumps(val, sort_keys=True)}" for k, val in native.items()) + ".")
    lines.append("")
    lines.append("Roofline, measured in the same run (one line per pytest run):")
    lines.append("")
    for i, run in enumerate(runs):
        rf = run_roofline(run)
        if rf:
            lines.append(f"* run {i} (`{Path(run['_source']).name}`): copy bandwidth **{rf['bw_GBps']:.1f} GB/s** "
                         f"({rf.get('bw_method', '')}); matmul peak **{rf['matmul_TFLOPs']:.2f} TFLOP/s** "
                         f"({rf.get('matmul_method', '')})")
        else:
            lines.append(f"* run {i} (`{Path(run['_source']).name}`): no roofline recorded (no kernel benchmark in this run)")
    lines.append("")
    if is_gpu:
        lines.append("*median*: median GPU time per call from CUDA events (after warm-up, host launch overhead "
                     "hidden, inputs rotated when smaller than 2x L2); *wall*: pytest-benchmark's median of "
                     "synchronised host wall time, launch overhead included.")
    else:
        lines.append("**CPU run: read the ratios, not the absolute numbers.** Times are wall-clock medians on "
                     "whatever CPU ran this (often a small shared runner); the speed-ups and the fractions of "
                     "the roofline measured in the same run are the results.")
    lines.append("GB/s and TFLOP/s are *useful* work rates: every implementation of a case is charged the "
                 "flops and bytes of the op's definition (see the docstrings in bench/), so they compare "
                 "directly. *% roof* = max(flops/peak, bytes/bandwidth) / time. *vs best baseline* = time of "
                 "the fastest baseline of the case / this time (> 1: faster).")
    lines.append("")

    cases = group_cases(rows)
    # headline: best sketchprune backend per case
    lines += ["## Headline", "", "| op | case | best sketchprune | median | % roof | vs each baseline |",
              "|---|---|---|---|---|---|"]
    for op, by_case in cases.items():
        for (case, _run), lst in by_case.items():
            mine = [r for r in lst if r.get("kind") == "sketchprune"]
            if not mine:
                continue
            best = mine[0]
            vs = ", ".join(f"{b['impl']} {b['median_s'] / best['median_s']:.2f}x"
                           for b in lst if b.get("kind") == "baseline")
            lines.append(f"| {op} | {case} | {best['impl']} | {fmt_time(best['median_s'])} | "
                         f"{fmt_pct(best.get('roofline_frac'))} | {vs or '—'} |")
    lines.append("")

    target_lines = []
    for dev_type, op, impl, base, need in TARGETS:
        for (case, _run), lst in cases.get(op, {}).items():
            if not lst or lst[0].get("device_type") != dev_type:
                continue
            mine = next((r for r in lst if r["impl"] == impl), None)
            ref = next((r for r in lst if r["impl"] == base), None)
            if mine is None or ref is None:
                missing = impl if mine is None else base
                target_lines.append(f"* {op} {case}: `{impl}` >= {need:g}x faster than `{base}`: "
                                    f"not measured (`{missing}` did not run)")
                continue
            ratio = ref["median_s"] / mine["median_s"]
            target_lines.append(f"* {op} {case}: `{impl}` >= {need:g}x faster than `{base}`: "
                                f"**{ratio:.2f}x**, {'met' if ratio >= need else 'NOT met'}")
    if target_lines:
        lines += ["## Targets", ""] + target_lines + [""]

    for op, by_case in cases.items():
        lines += [f"## {op}", ""]
        head = "| case | impl | median |" + (" wall |" if is_gpu else "") + \
               " GB/s | TFLOP/s | % BW | % matmul | % roof | vs best baseline |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for (case, _run), lst in by_case.items():
            bb = best_baseline(lst)
            for r in lst:
                ratio = f"{bb['median_s'] / r['median_s']:.2f}x" if bb else "—"
                if bb is r:
                    ratio += " (best baseline)"
                cells = [case, f"`{r['impl']}`", fmt_time(r["median_s"])]
                if is_gpu:
                    cells.append(fmt_time(r.get("wall_median_s")))
                no_flops = not r.get("flops")
                cells += [fmt_num(r.get("GBps")), "—" if no_flops else fmt_num(r.get("TFLOPs"), 2),
                          fmt_pct(r.get("frac_bw_roofline")), "—" if no_flops else fmt_pct(r.get("frac_matmul_roofline")),
                          fmt_pct(r.get("roofline_frac")), ratio]
                lines.append("| " + " | ".join(cells) + " |")
        for (case, _run), lst in by_case.items():
            for r in lst:
                if isinstance(r.get("details"), dict):
                    kv = ", ".join(f"{k} = {fmt_detail(v)}" for k, v in r["details"].items())
                    lines.append(f"* {case}, `{r['impl']}`: {kv}")
        notes = sorted({f"`{r['impl']}`: {r['note']}" for lst in by_case.values() for r in lst if r.get("note")})
        if notes:
            lines += [""] + [f"* {n}" for n in notes]
        lines.append("")

    if skips:
        lines += ["## Skipped", ""]
        by_reason: dict = {}
        for s in skips:
            by_reason.setdefault(s["reason"], []).append(s["test"])
        for reason, tests in by_reason.items():
            names = ", ".join(f"`{t.split('::')[-1]}`" for t in tests[:6]) + (f" (+{len(tests) - 6} more)" if len(tests) > 6 else "")
            lines.append(f"* {reason} -- {len(tests)} benchmark(s): {names}")
        lines.append("")
    return "\n".join(lines)


def summarize(out_dir: Path, paths: list[Path]) -> list[Path]:
    runs = load(paths)
    if not runs:
        raise SystemExit("summarize: no readable pytest-benchmark JSON input")
    by_device: dict = {}
    for run in runs:
        by_device.setdefault(run_device(run), []).append(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for device, druns in by_device.items():
        stamp = druns[0].get("datetime") or _dt.datetime.now(_dt.timezone.utc).isoformat()
        date = stamp[:10]
        rows = rows_of(druns)
        skips = [s for run in druns for s in run.get("sketchprune_skips") or []]
        base = out_dir / f"{slugify(device)}-{date}"
        merged = {
            "schema": "sketchprune-bench/1",
            "device": device,
            "device_slug": slugify(device),
            "date": date,
            "versions": versions_of(druns),
            "roofline": [run_roofline(r) for r in druns],
            "machine_info": druns[0].get("machine_info"),
            "commit_info": druns[0].get("commit_info"),
            "runs": [{"source": Path(r["_source"]).name, "datetime": r.get("datetime"), "roofline": run_roofline(r),
                      "n_benchmarks": len(r["benchmarks"])} for r in druns],
            "skipped": skips,
            "benchmarks": [{**b, "run": i} for i, r in enumerate(druns) for b in r["benchmarks"]],
        }
        base.with_suffix(".json").write_text(json.dumps(merged, indent=1, sort_keys=False) + "\n")
        base.with_suffix(".md").write_text(render_md(device, date, druns, rows, skips) + "\n")
        written += [base.with_suffix(".json"), base.with_suffix(".md")]
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 usage="summarize.py [OUT_DIR] RUN.json [RUN.json ...]")
    ap.add_argument("args", nargs="+", help="[OUT_DIR] then pytest-benchmark JSON files")
    ns = ap.parse_args(argv)
    args = list(ns.args)
    out_dir = DEFAULT_OUT
    if not args[0].endswith(".json"):
        out_dir = Path(args.pop(0))
    if not args:
        ap.error("no JSON input given")
    for p in summarize(out_dir, [Path(a) for a in args]):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
