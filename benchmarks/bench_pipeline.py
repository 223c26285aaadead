"""Pipeline speed: `make demo`'s research pipeline end to end, and the runner's overhead per step.

1. The demo: `wb run research` (what `make demo` runs) in a fresh temporary copy of the project
   (config, pipelines, notebooks; its own data, runs and MLflow store), as a subprocess. Printed:
   the total, and per step its wall time in the runner, the time its cells ran (papermill's cell
   durations), the import cell's share, and the overhead (step time minus cell time: kernel
   start, notebook read/write, outputs and MLflow logging of the notebook).
2. The overhead alone: a pipeline of five no-op notebooks (a parameters cell and one line) run by
   the runner, side by side in this process, interleaved, with what a step cannot do without: a
   bare ``jupyter_client`` kernel start (start to ready, then shutdown), a bare ``nbclient``
   execution of the same notebook (fresh kernel), and ``papermill.execute_notebook`` with a fresh
   kernel (what each step cost before kernels were started ahead). Best of N rounds.

Targets: the demo <= 60 s; overhead per step <= 0.3 s (the no-op pipeline's median step, and
every research step after the first: the first step's kernel can only start with the run).
The load average is printed with every figure: the machine may be shared.

Run: .venv/bin/python benchmarks/bench_pipeline.py [--rounds 5] [--skip-demo]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import load_text, report

REPO = Path(__file__).resolve().parents[1]
WB = Path(sys.executable).with_name("wb")
DEMO_TARGET = 60.0
OVERHEAD_TARGET = 0.3

NOOP_NOTEBOOK = """# %% tags=["parameters"]
x: int = 1  # a number
output_path: str = ""  # set by the runner
parent_run_id: str = ""  # set by the runner
pipeline: str = ""  # set by the runner

# %%
y = x + 1
"""
NOOP_SPEC = "name: noop\nparameters: {x: 1}\nsteps:\n" + "".join(
    f"  - name: s{i}\n    notebook: nb/noop.ipynb\n    parameters: {{x: '${{x}}'}}\n"
    for i in range(1, 6)
)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the project's overrides (a fresh clone's `make demo`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WB_", "MLFLOW_"))}
    return {**env, **extra}


def copy_project(dest: Path) -> Path:
    for part in ("config", "pipelines", "notebooks"):
        shutil.copytree(REPO / part, dest / part)
    git = ["git", "-C", str(dest), "-c", "user.email=bench@localhost", "-c", "user.name=bench"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run([*git, *args], check=False, capture_output=True)
    return dest


def step_breakdown(run_dir: Path) -> list[dict]:
    """Per step: runner seconds, cell seconds, import-cell seconds, overhead."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = []
    for s in summary["steps"]:
        row = {"step": s["step"], "status": s["status"], "seconds": s["seconds"]}
        nbs = sorted(run_dir.glob(f"[0-9][0-9]_{s['step']}.ipynb"))
        if s["status"] == "ok" and nbs:
            nb = json.loads(nbs[0].read_text())
            cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
            durs = [(c["metadata"].get("papermill", {}).get("duration") or 0.0) for c in cells]
            tags = [c["metadata"].get("tags", []) for c in cells]
            after = next((i + 1 for i, t in enumerate(tags) if "injected-parameters" in t), 0)
            row["cells"] = sum(durs)
            row["import_cell"] = durs[after] if after < len(durs) else 0.0
            row["overhead"] = s["seconds"] - row["cells"]
        rows.append(row)
    return rows


def run_demo() -> tuple[float, list[dict], str]:
    with tempfile.TemporaryDirectory(prefix="wb-demo-") as tmp:
        proj = copy_project(Path(tmp) / "proj")
        before = load_text()
        t0 = time.perf_counter()
        out = subprocess.run(
            [str(WB), "run", "research"], cwd=proj, env=clean_env(), capture_output=True, text=True
        )
        total = time.perf_counter() - t0
        if out.returncode != 0:
            raise SystemExit(f"wb run research failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        run_dir = next((proj / "runs" / "research").iterdir())
        return total, step_breakdown(run_dir), f"{before} -> {load_text()}"


def noop_project(root: Path) -> Path:
    import jupytext

    (root / "config").mkdir(parents=True)
    (root / "config" / "workbench.yaml").write_text("mlflow:\n  experiment: noop\n")
    (root / "pipelines").mkdir()
    (root / "pipelines" / "noop.yaml").write_text(NOOP_SPEC)
    (root / "nb").mkdir()
    nb = jupytext.reads(NOOP_NOTEBOOK, fmt="py:percent")
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    jupytext.write(nb, root / "nb" / "noop.ipynb")
    return root


RUNNER_MEDIAN = "runner: no-op step overhead, median of 5 steps"
RUNNER_FIRST = "runner: no-op step overhead, first step"
RUNNER_WORST = "runner: no-op step overhead, worst later step"
KERNEL_READY = "bare jupyter_client: kernel start to ready"
KERNEL_CYCLE = "bare jupyter_client: kernel start + shutdown"
BARE_NBCLIENT = "bare nbclient run, fresh kernel"
PAPERMILL_FRESH = "papermill run, fresh kernel (+ shutdown)"


def overhead_rounds(rounds: int) -> dict[str, list[float]]:
    """Interleaved: the runner's no-op steps and the peers, ``rounds`` times (after one warm-up)."""
    import nbformat
    import papermill
    from nbclient import NotebookClient

    from workbench.config import load_config
    from workbench.pipeline import run_pipeline
    from workbench.pipeline.kernels import KernelKey, new_kernel_manager, shutdown, start_kernel

    names = (RUNNER_MEDIAN, RUNNER_FIRST, RUNNER_WORST, KERNEL_READY, KERNEL_CYCLE)
    out: dict[str, list[float]] = {k: [] for k in (*names, BARE_NBCLIENT, PAPERMILL_FRESH)}
    with tempfile.TemporaryDirectory(prefix="wb-noop-") as tmp:
        root = noop_project(Path(tmp) / "proj")
        nb_path = root / "nb" / "noop.ipynb"
        for k in [k for k in os.environ if k.startswith(("WB_", "MLFLOW_"))]:
            del os.environ[k]
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        cfg = load_config(root)
        for r in range(rounds + 1):  # round 0 warms the disk cache and the imports
            res = run_pipeline("noop", {}, cfg=cfg, echo=lambda _: None)
            assert res.ok, res.summary()
            over = [row["overhead"] for row in step_breakdown(res.run_dir)]

            t0 = time.perf_counter()
            km = start_kernel(KernelKey.for_step(nb_path))
            ready = time.perf_counter() - t0
            shutdown(km)
            cycle = time.perf_counter() - t0

            t0 = time.perf_counter()
            NotebookClient(nbformat.read(nb_path, as_version=4), kernel_name="python3").execute()
            bare = time.perf_counter() - t0

            t0 = time.perf_counter()
            km = new_kernel_manager()
            papermill.execute_notebook(
                str(nb_path),
                str(Path(tmp) / "pm.ipynb"),
                parameters={"x": 2},
                progress_bar=False,
                kernel_name="python3",
                km=km,
            )
            shutdown(km)
            pm_fresh = time.perf_counter() - t0
            if r == 0:
                continue
            for key, v in zip(
                (*names, BARE_NBCLIENT, PAPERMILL_FRESH),
                (statistics.median(over), over[0], max(over[1:]), ready, cycle, bare, pm_fresh),
                strict=True,
            ):
                out[key].append(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the no-op runs")
    ap.add_argument("--skip-demo", action="store_true", help="only the no-op overhead")
    args = ap.parse_args()
    print(f"load average {load_text()}")

    t = overhead_rounds(args.rounds)
    print(f"\nno-op notebook, {args.rounds} interleaved rounds (load {load_text()}):")
    for name, vals in t.items():
        print(f"  {name:<48} best {min(vals):6.3f} s   median {statistics.median(vals):6.3f} s")
    ours, peer = min(t[RUNNER_MEDIAN]), min(t[PAPERMILL_FRESH])
    report("pipeline: overhead per no-op step (median step of 5, kernel start included)", ours,
           peer, unit="s", ours_label="wb runner, kernels started ahead",
           peer_label="papermill with a fresh kernel", target=OVERHEAD_TARGET, kind="max",
           note=f"best of {args.rounds}; bare kernel start to ready {min(t[KERNEL_READY]):.2f} s, "
           f"bare nbclient {min(t[BARE_NBCLIENT]):.2f} s; the runner's first step "
           f"{min(t[RUNNER_FIRST]):.2f} s, worst later step {min(t[RUNNER_WORST]):.2f} s")  # fmt: skip
    if args.skip_demo:
        return

    total, steps, ld = run_demo()
    print(f"\n`wb run research` in a fresh project copy: {total:.1f} s (load {ld})")
    print(f"  {'step':<14} {'seconds':>8} {'cells':>8} {'import':>8} {'overhead':>9}")
    for s in steps:
        if "cells" in s:
            print(f"  {s['step']:<14} {s['seconds']:8.2f} {s['cells']:8.2f} "
                  f"{s['import_cell']:8.2f} {s['overhead']:9.3f}")  # fmt: skip
        else:
            print(f"  {s['step']:<14} {s['seconds']:8.2f}  ({s['status']})")
    per_step = ", ".join(f"{s['step']} {s['overhead']:.2f}" for s in steps if "overhead" in s)
    report("pipeline: make demo, `wb run research` in a fresh project copy", total, unit="s",
           ours_label="fresh process, imports included", target=DEMO_TARGET, kind="max",
           note=f"load {ld}")  # fmt: skip
    later = [s for s in steps[1:] if "overhead" in s]
    if later:
        worst = max(later, key=lambda s: s["overhead"])
        report("pipeline: research step overhead, worst step after the first", worst["overhead"],
               unit="s", ours_label=f"step {worst['step']}", target=OVERHEAD_TARGET, kind="max",
               note=f"step time minus cell time, per step: {per_step}")  # fmt: skip


if __name__ == "__main__":
    main()
