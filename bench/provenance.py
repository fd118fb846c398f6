"""Where a result came from, for the experiment scripts in bench/: the git commit (marked
``+uncommitted`` when the working tree has changes) and the machine it ran on."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    try:
        c = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        return (c or "unknown") + ("+uncommitted" if dirty else "")
    except Exception:
        return "unknown"


def machine() -> str:
    try:
        from sketchprune.info import cpu_name

        cpu = cpu_name()
    except Exception:
        cpu = platform.processor() or "cpu"
    return (f"{cpu}, {torch.get_num_threads()} threads ({os.cpu_count()} cores), "
            f"{platform.system()} {platform.release()}, torch {torch.__version__}")
