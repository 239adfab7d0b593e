"""Early stopping, the epoch line and the stopping-reason recommendations, on hand-built states."""

from __future__ import annotations

from types import SimpleNamespace

from reid.engine.hooks import EpochResult
from reid.engine.record import recommendation, resume_command
from reid.engine.standard_hooks import EarlyStopping, epoch_line
from reid.engine.stopping import StopReason, TrainingDiverged
from reid.engine.trainer import TrainState


def result(epoch: int, mean_ap: float | None) -> EpochResult:
    metrics = None if mean_ap is None else {"mAP": mean_ap, "rank1": 0.5, "rank5": 0.6, "rank10": 0.7, "mINP": 0.1}
    return EpochResult(epoch=epoch, lr=3.5e-4, losses={"total": 4.12, "ce": 3.9, "tri": 0.22}, train_top1=0.5,
                       metrics=metrics, epoch_time=41.2)


def test_early_stopping_counts_epochs_since_the_best():
    trainer = SimpleNamespace(state=TrainState(best_metrics={"mAP": 0.4}, best_epoch=3))
    hook = EarlyStopping(patience=4)
    for epoch in (4, 5, 6):
        hook.after_epoch(trainer, result(epoch, 0.3))
        assert trainer.state.stop is None
    hook.after_epoch(trainer, result(7, None))  # no evaluation this epoch: no decision
    assert trainer.state.stop is None
    hook.after_epoch(trainer, result(7, 0.3))
    assert trainer.state.stop.kind == "early_stopping"
    assert trainer.state.stop.message == "no mAP improvement for 4 epochs (early-stopping patience 4)"


def test_early_stopping_and_epoch_line_follow_the_monitor():
    trainer = SimpleNamespace(state=TrainState(monitor="val_top1", best_metrics={"mAP": 0.4, "val_top1": 0.75},
                                               best_epoch=2))
    assert trainer.state.best_value == 0.75 and trainer.state.best_map == 0.4
    EarlyStopping(patience=3).after_epoch(trainer, result(5, 0.9))
    assert trainer.state.stop.message == "no val_top1 improvement for 3 epochs (early-stopping patience 3)"
    closed = result(5, 0.412)
    closed.metrics |= {"val_loss": 0.7123, "val_top1": 0.8125, "val_top5": 0.95}
    closed.improved = True
    assert epoch_line(closed, 60, "val_top1") == ("[Epoch 5/60] lr=3.50e-04 | loss=4.120 (ce=3.900 tri=0.220) | "
                                                  "mAP=0.412 R1=0.500 val_loss=0.712 val_top1=0.812 val_top5=0.950 * "
                                                  "| 41.2s")
    assert epoch_line(result(5, 0.412), 60, "mINP").endswith("mAP=0.412 R1=0.500 mINP=0.100 | 41.2s")


def test_patience_zero_never_stops():
    trainer = SimpleNamespace(state=TrainState(best_metrics={"mAP": 0.4}, best_epoch=1))
    EarlyStopping(patience=0).after_epoch(trainer, result(100, 0.1))
    assert trainer.state.stop is None


def test_epoch_line_format():
    assert epoch_line(result(3, 0.412), 60) == \
        "[Epoch 3/60] lr=3.50e-04 | loss=4.120 (ce=3.900 tri=0.220) | mAP=0.412 R1=0.500 | 41.2s"
    assert epoch_line(result(4, None), 60) == "[Epoch 4/60] lr=3.50e-04 | loss=4.120 (ce=3.900 tri=0.220) | 41.2s"


def test_recommendations_follow_the_reason():
    info = {"run_dir": "/runs/a", "overrides": ["optimizer.lr=7e-4", "trainer.resume=/old"]}
    assert resume_command(info) == "python -m reid.train optimizer.lr=7e-4 trainer.resume=/runs/a"
    assert resume_command(info) in recommendation(StopReason.interrupted(), info)
    assert "trainer.grad_clip" in recommendation(StopReason.diverged(TrainingDiverged(float("nan"), 2, 5)), info)
    assert "smaller batch" in recommendation(StopReason.out_of_memory(64), info)
    assert "more epochs may pay" in recommendation(StopReason.completed(10), {**info, "still_improving": True})
    assert "converged" in recommendation(StopReason.early_stopping(10, 10), info)
