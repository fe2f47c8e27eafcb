"""Running one stage of the built-in model's training (opensd.training.builtin): a process's rows of
each batch under data parallelism, and a stage's length fitted to a time budget."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..atomic import write_atomic

log = logging.getLogger(__name__)


def rows_of(parallel, n: int) -> tuple[slice, float]:
    return parallel.rows(n) if parallel is not None else (slice(None), 1.0)


def run_planned(make, steps: int, run_dir: Path, budget_s: float | None, progress: bool, until: int | None,
                probe: int = 30):
    """Run `make(steps)`'s trainer; with a time budget, first time `probe` steps and shrink the schedule
    so the stage ends within the budget. The chosen length is kept in plan.json so a resumed run
    keeps the same cosine schedule."""
    plan = run_dir / "plan.json"
    if plan.is_file():
        steps = json.loads(plan.read_text())["steps"]
    elif budget_s and not (run_dir / "state.pt").is_file() and steps > 2 * probe:
        t0 = time.time()
        make(steps).run(progress=False, until=5)  # warm-up (allocator, kernels) not counted
        t1 = time.time()
        make(steps).run(progress=False, until=5 + probe)
        per = (time.time() - t1) / probe
        steps = int(min(steps, 5 + probe + (budget_s - (time.time() - t0)) / per))
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(plan, json.dumps({"steps": steps, "seconds_per_step": per, "budget_s": budget_s}))
        log.info("%s: %.3f s/step -> %d steps fit %.0f s", run_dir.name, per, steps, budget_s)
    trainer = make(steps)
    return trainer, trainer.run(progress=progress, until=until)
