"""One training loop for every job (built-in model, LoRA, DreamBooth, textual inversion, ControlNet).

Resumable: every `save_every` steps the whole state (weights, EMA, optimizer, step, RNG states)
is written atomically to `run_dir/state.pt`; `Trainer.run()` continues from it, so `kill -9`
followed by the same command carries on the same run. Checkpoints hold only tensors and plain
Python values and are read back with weights_only=True.

Data-parallel (opensd.distributed.ddp, under torchrun): with `parallel` given, the loss runs
through DistributedDataParallel (gradients averaged over the processes), the losses shown and kept
are the whole batch's, and only rank 0 writes the state and samples.
"""
from __future__ import annotations

import copy
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import InvalidArgument
from .lr_schedules import lr_factor

log = logging.getLogger(__name__)

STATE = "state.pt"


@dataclass
class TrainConfig:
    steps: int
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.0          # 0 disables EMA
    save_every: int = 200
    sample_every: int = 0            # 0 disables sample grids
    seed: int = 0
    bf16: bool = False               # autocast matmuls/convs to bf16 (CPU or CUDA)
    lr_scheduler: str | None = None  # a name of lr_schedules.SCHEDULERS; None: warm-up, then cosine to 10%
    lr_cycles: int = 1               # cosine_with_restarts: the number of waves
    lr_power: float = 1.0            # polynomial: the power


# loss_fn(model, batch, step) -> scalar loss tensor
LossFn = Callable[[nn.Module, object, int], torch.Tensor]
# sample_fn(ema_or_model, step, run_dir) -> None; writes a grid or whatever the job shows
SampleFn = Callable[[nn.Module, int, Path], None]
# on_step(step, losses) after each step (and its save and samples); raising stops the run, its state saved
StepFn = Callable[[int, list[float]], None]


class EMA:
    """Exponential moving average of the trainable parameters (kept in fp32)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().float().clone() for k, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm-up (1+n)/(10+n) as in common practice, so early EMA is not dominated by the init.
        d = min(self.decay, (1 + step) / (10 + step))
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach().float(), 1 - d)

    def copy_into(self, model: nn.Module) -> nn.Module:
        ema_model = copy.deepcopy(model)
        with torch.no_grad():
            for k, p in ema_model.named_parameters():
                if k in self.shadow:
                    p.copy_(self.shadow[k].to(p.dtype))
        return ema_model


class Trainer:
    def __init__(self, model: nn.Module, batches: Callable[[int], Iterator], loss_fn: LossFn,
                 cfg: TrainConfig, run_dir: Path, sample_fn: SampleFn | None = None,
                 params: list[nn.Parameter] | None = None, parallel=None):
        """`batches(start_step)` yields batches from that step on, so a resumed run continues the
        same data order; `params` restricts training to a subset (LoRA, embeddings), either a list
        of parameters or of optimizer groups `{"params": [...], "lr_scale": s}` (learning rate
        cfg.lr * s, e.g. a text encoder trained slower than the UNet); `parallel`: a
        distributed.ddp.Parallel when several processes train together."""
        self.model = model
        self.batches = batches
        self.loss_fn = loss_fn
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.sample_fn = sample_fn
        self.parallel = parallel
        self.main = parallel is None or parallel.main  # the process that writes
        groups = params if params is not None else [p for p in model.parameters() if p.requires_grad]
        if groups and isinstance(groups[0], dict):
            self.params = [p for g in groups for p in g["params"]]
        else:
            self.params, groups = list(groups), [{"params": list(groups)}]
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.step = 0
        self.losses: list[float] = []

    # --- state -----------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "step": self.step,
            "model": {k: v for k, v in self.model.state_dict().items()},
            "opt": self.opt.state_dict(),
            "ema": self.ema.shadow if self.ema else None,
            "losses": self.losses[-1000:],
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                    "python_pos": random.getstate()[2], "numpy": np.random.get_state()[1].tolist(),
                    "numpy_pos": int(np.random.get_state()[2])},
            "config": asdict(self.cfg),
        }

    def save(self) -> Path:
        if not self.main:
            return self.run_dir / STATE
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.run_dir / STATE) as f:  # a kill mid-save keeps the previous state
            torch.save(self.state(), f)
        return self.run_dir / STATE

    def try_resume(self) -> bool:
        path = self.run_dir / STATE
        if not path.is_file():
            return False
        s = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        if self.ema and s["ema"] is not None:
            params = dict(self.model.named_parameters())  # the state was saved from any device
            self.ema.shadow = {k: v.float().to(params[k].device) for k, v in s["ema"].items()}
        self.step = s["step"]
        self.losses = list(s["losses"])
        rng = s["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate((3, tuple(rng["python"]), rng["python_pos"]))
        np.random.set_state(("MT19937", np.array(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0))
        log.info("resumed %s at step %d", self.run_dir, self.step)
        return True

    # --- loop ------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """The schedule cfg.lr_scheduler names; by default linear warm-up, then cosine decay to 10% of the peak."""
        if self.cfg.lr_scheduler is not None:
            return self.cfg.lr * lr_factor(self.cfg.lr_scheduler, step, self.cfg.steps, self.cfg.warmup,
                                           self.cfg.lr_cycles, self.cfg.lr_power, self.cfg.lr)
        if step < self.cfg.warmup:
            return self.cfg.lr * (step + 1) / self.cfg.warmup
        t = (step - self.cfg.warmup) / max(1, self.cfg.steps - self.cfg.warmup)
        return self.cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    def run(self, progress: bool = True, until: int | None = None, on_step: StepFn | None = None) -> nn.Module:
        """Train to cfg.steps, or stop early at step `until` (resuming if a state exists); returns
        the EMA model if any. `on_step` is how a caller follows the run and stops it."""
        end = self.cfg.steps if until is None else min(until, self.cfg.steps)
        if not self.try_resume():
            torch.manual_seed(self.cfg.seed)
            random.seed(self.cfg.seed)
            np.random.seed(self.cfg.seed)
        if self.step > self.cfg.steps:
            raise InvalidArgument(f"steps: {self.run_dir} already holds {self.step} trained steps; give --steps "
                                  f"{self.step} or more to continue it (more steps extend a finished run)")
        from tqdm import tqdm

        bar = tqdm(total=self.cfg.steps, initial=self.step, desc=self.run_dir.name, unit="step",
                   file=sys.stderr, disable=not progress or not self.main, dynamic_ncols=True)
        self.model.train()
        data = self.batches(self.step)
        ddp = self.parallel.wrap(self.model, self.loss_fn) if self.parallel is not None else None
        device_type = next(self.model.parameters()).device.type
        started = time.time()
        while self.step < end:
            batch = next(data)
            for group in self.opt.param_groups:
                group["lr"] = self.lr_at(self.step) * group.get("lr_scale", 1.0)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
                loss = self.loss_fn(self.model, batch, self.step) if ddp is None else ddp(batch, self.step)
            whole = loss.detach() if self.parallel is None else self.parallel.mean(loss)  # the whole batch's
            if not torch.isfinite(whole):
                raise FloatingPointError(f"loss is {whole.item()} at step {self.step}; lower the learning rate")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.opt.step()
            if self.ema:
                self.ema.update(self.model, self.step)
            self.step += 1
            self.losses.append(whole.item())
            recent = self.losses[-50:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{self.lr_at(self.step):.1e}")
            bar.update(1)
            if self.step % self.cfg.save_every == 0 or self.step == end:
                self.save()
            if self.sample_fn and self.main and self.cfg.sample_every and self.step % self.cfg.sample_every == 0:
                self.model.eval()
                self.sample_fn(self.final_model(), self.step, self.run_dir)
                self.model.train()
            if on_step is not None:
                try:
                    on_step(self.step, self.losses)
                except BaseException:
                    bar.close()
                    self.save()  # stopped from outside: the same command resumes from this step
                    raise
        bar.close()
        log.info("trained %d steps in %.0f s", self.step, time.time() - started)
        self.model.eval()
        return self.final_model()

    def final_model(self) -> nn.Module:
        return self.ema.copy_into(self.model) if self.ema else self.model
