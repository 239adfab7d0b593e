"""A plain Hydra app that runs under torchrun (the sweeper's `processes_per_trial` tests), without reid.

Each rank computes its share of x**2 + y**2 and gloo sums them. Rank 0 reports the sum to the trial at each of
`report_steps` steps and decides on pruning, which it broadcasts; every rank returns the sum. `fail_rank` makes
that rank raise at once, before it joins the others.
"""

import os
import sys

import hydra
import optuna
from omegaconf import DictConfig

from hydra_plugins.reid_optuna_sweeper import current_trial


@hydra.main(version_base="1.3", config_path="conf", config_name="allreduce")
def allreduce(cfg: DictConfig) -> float:
    # Imported here, so the sweep process, which runs this file too, shows it never needs torch itself.
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.fail_rank == rank:
        raise RuntimeError(f"rank {rank} cannot compute its share")
    dist.init_process_group("gloo")
    try:
        terms = torch.tensor([cfg.x**2, cfg.y**2], dtype=torch.float64)
        total = terms[rank::world].sum()
        dist.all_reduce(total)
        value = float(total)
        trial = current_trial() if rank == 0 else None
        if trial is not None:
            trial.set_user_attr("world_size", world)
        for step in range(1, cfg.report_steps + 1):
            prune = torch.zeros(1)
            if trial is not None:
                trial.report(value, step)
                prune[0] = float(trial.should_prune())
            dist.broadcast(prune, src=0)
            if prune.item():
                raise optuna.TrialPruned(f"pruned at step {step} on rank {rank}")
        print(f"JOB rank={rank} world={world} x={cfg.x} value={value}")
        return value
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    allreduce()
    print("IMPORTED", sorted(name for name in ("torch", "reid") if name in sys.modules))
