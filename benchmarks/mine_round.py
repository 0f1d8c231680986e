"""One hard-negative mining round on the demo project, measured: evaluate, mine, accept,
`dvc repro evaluate mine` (which retrains on the accepted clips; export is left out, it
does not change the float model's figures), evaluate again.

Runs in a scratch clone so the repository's own data stays as committed; the clone shares
this checkout's DVC cache, so the first `dvc repro` only checks out what is already built.
Prints the evaluation figures before and after, side by side:

    python benchmarks/mine_round.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run(cwd: Path, *cmd: str) -> None:
    # PYTHONPATH: the clone's stages must run the clone's code, not this checkout's
    # editable install (which may hold uncommitted changes).
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(cwd),
    }
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def figures(root: Path) -> dict[str, Any]:
    ev = json.loads((root / "metrics" / "evaluate.json").read_text())
    op = ev["operating_point"]
    out = {
        "FAH at the operating point": f"{op['fah']:.2f} ({op['fah_lo']:.2f}-{op['fah_hi']:.2f})",
        "recall at the operating point": f"{op['recall']:.4f}",
        "threshold": f"{op['threshold']:.4f}",
    }
    for thr, v in ev["fah_at_threshold"].items():
        out[f"FAH at threshold {thr}"] = f"{v['fah']:.2f} ({v['fah_lo']:.2f}-{v['fah_hi']:.2f})"
        out[f"recall at threshold {thr}"] = f"{v['recall']:.4f}"
    for r, v in ev["fah_at_recall"].items():
        out[f"FAH at recall {r}"] = "n/a" if v["fah"] is None else f"{v['fah']:.2f}"
    for f, v in ev["frr_at_fah"].items():
        out[f"FRR at FAH {f}"] = f"{v['frr']:.4f}"
    out["clip ROC-AUC"] = f"{ev['clips']['roc_auc']:.5f}"
    mine = json.loads((root / "metrics" / "mine.json").read_text())
    out[f"mining-pool runs above {mine['threshold']}"] = str(mine["windows_runs"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="soundops-mine-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "project"
    if not root.exists():
        run(work, "git", "clone", "-q", str(REPO), str(root))
        run(root, "dvc", "config", "--local", "cache.dir", str(REPO / ".dvc" / "cache"))
    start = time.perf_counter()
    run(root, "dvc", "repro", "-q", "evaluate", "mine")
    before = figures(root)
    mined = json.loads((root / "metrics" / "mine.json").read_text())
    run(root, "soundops", "mine", "accept")
    run(root, "dvc", "repro", "-q", "evaluate", "mine")
    after = figures(root)
    print(
        f"mined {mined['hours_scanned']:.2f} h at threshold {mined['threshold']}: "
        f"{mined['windows_runs']} runs, {mined['mined']} mined clips accepted "
        f"({time.perf_counter() - start:.0f} s for the round)"
    )
    width = max(len(k) for k in before)
    print(f"{'':<{width}}  {'before':>22}  {'after':>22}")
    for key in before:
        print(f"{key:<{width}}  {before[key]:>22}  {after.get(key, ''):>22}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
