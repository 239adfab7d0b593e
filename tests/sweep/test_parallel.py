"""Two sweep processes sharing one journal-file study split the work exactly."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import train_env
from optuna.trial import TrialState
from sweep_helpers import TINY, load, sweep_command

# Several cooperating processes: run by `nox -s multiprocess` (docs in noxfile.py).
pytestmark = pytest.mark.multiprocess

PLATEAU = {"higher_lr", "cosine_annealing", "heavy_triplet", "aggressive_lr_drop", "smaller_batch_higher_lr"}


def test_two_workers_share_one_study(tmp_path: Path, data_dir: Path) -> None:
    journal = tmp_path / "shared.journal"
    args = [*TINY, "hydra.sweeper.n_trials=7", "trainer.max_epochs=1", f"hydra.sweeper.storage={journal}",
            "hydra.sweeper.study_name=shared"]
    workers = [subprocess.Popen(sweep_command([*args, f"hydra.sweep.dir={tmp_path}/worker{i}"]), cwd=tmp_path,
                                env=train_env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    outputs = [worker.communicate(timeout=240) for worker in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
        assert "database is locked" not in out + err
    trials = load(journal, "shared").get_trials()
    assert len(trials) == 7
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    variants = Counter(t.user_attrs["variant"] for t in trials)
    assert variants == Counter({**{name: 1 for name in PLATEAU}, "sampled": 2})
    assert [t.user_attrs["variant"] for t in trials[:5]] == [
        "higher_lr", "cosine_annealing", "heavy_triplet", "aggressive_lr_drop", "smaller_batch_higher_lr"]
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2
    run_dirs = {Path(t.user_attrs["run_dir"]).parent.name for t in trials}
    assert run_dirs == {"worker0", "worker1"}
