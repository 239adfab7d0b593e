"""`reid.plateau` on histories built to show one pattern each, a healthy history, and the CLI around them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from reid.plateau import main
from reid.selection.diagnosis import (
    CE_AT_CHANCE,
    COLLAPSE,
    IMBALANCE,
    LR_DROPPED_EARLY,
    NEEDS_MORE_EPOCHS,
    OVERFITTING,
    Thresholds,
    diagnose,
    load_run,
    with_overrides,
)

LR = 3.5e-4
OVERRIDES = ["experiment=demo", "optimizer.lr=0.00035"]


def config(lr: float = LR, **loss: Any) -> dict[str, Any]:
    return {
        "loss": {"_target_": "reid.losses.reid_loss.ReidLoss", "ce_weight": 1.0, "triplet_weight": 1.0,
                 "label_smoothing": 0.1, "margin": 0.3, "soft_margin": False, **loss},
        "optimizer": {"_target_": "torch.optim.Adam", "lr": lr, "weight_decay": 5e-4},
        "scheduler": {"_target_": "reid.engine.schedulers.WarmupMultiStepLR", "milestones": [30], "gamma": 0.1},
        "data": {"augment": True, "random_erasing_prob": 0.5},
    }


def rows(epochs: int, *, lr, ce, tri, mAP, eval_every: int = 2) -> list[dict[str, Any]]:
    """History rows from per-epoch functions; mAP only on evaluated epochs (every `eval_every` and the last)."""
    out = []
    for e in range(1, epochs + 1):
        c, t = ce(e), tri(e)
        evaluated = e % eval_every == 0 or e == epochs
        out.append({"epoch": e, "lr": lr(e), "loss": (c or 0.0) + (t or 0.0), "loss_ce": c, "loss_tri": t,
                    "train_top1": 0.5, "mAP": mAP(e) if evaluated else None, "epoch_time": 1.0})
    return out


def make_run(tmp_path: Path, history: list[dict[str, Any]], *, classes: int = 751, hyper: dict | None = None,
             overrides: list[str] | None = None, status: str = "finished") -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    maps = [(r["mAP"], r["epoch"]) for r in history if r["mAP"] is not None]
    best_map, best_epoch = max(maps)
    info = {"status": status, "run_dir": str(run_dir), "overrides": OVERRIDES if overrides is None else overrides,
            "best_map": best_map, "best_epoch": best_epoch, "epochs_trained": len(history),
            "max_epochs": len(history), "num_classes": classes, "dataset": {"num_classes": classes},
            "hyperparameters": hyper or config(),
            "stopping_reason": {"kind": "completed", "message": f"all {len(history)} epochs completed"}}
    (run_dir / "model_info.json").write_text(json.dumps(info))
    (run_dir / "training_history.json").write_text(json.dumps({"epochs": history}))
    return run_dir


def warmup_then_step(e: int) -> float:
    """BoT-style LR: 3 warm-up epochs, then 3.5e-4, a tenth of it from epoch 31."""
    return LR * min(1.0, e / 3) * (0.1 if e > 30 else 1.0)


def plateau_map(e: int) -> float:
    """mAP that rises, then settles around 0.795 with the best in the middle of the plateau."""
    return 0.8 * (1 - math.exp(-e / 6)) if e < 30 else {30: 0.795, 32: 0.797, 34: 0.796}.get(e, 0.794)


def healthy() -> list[dict[str, Any]]:
    return rows(40, lr=warmup_then_step, ce=lambda e: 1.2 + 5.4 * math.exp(-(e - 1) / 3),
                tri=lambda e: 0.05 + 0.6 * math.exp(-(e - 1) / 4), mAP=plateau_map)


def codes(tmp_path: Path, history: list[dict[str, Any]], **kwargs: Any) -> list[str]:
    return diagnose(load_run(make_run(tmp_path, history, **kwargs))).codes


def test_a_healthy_run_gets_no_finding(tmp_path, capsys):
    run_dir = make_run(tmp_path, healthy())
    assert main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "Findings: none. The run looks healthy" in out
    assert f"Next command: none needed; deploy {run_dir.resolve() / 'best_model.pth'}." in out
    assert "python -m reid.train" not in out
    assert (run_dir / "PLATEAU_DIAGNOSIS.txt").read_text() in out


def test_ce_stuck_at_ln_num_classes(tmp_path, capsys):
    """The issue's example: CE stuck at 6.7 with 751 identities, where ln 751 = 6.62."""
    history = rows(20, lr=lambda e: 1e-5, ce=lambda e: 6.75 - 0.0025 * e, tri=lambda e: 0.9 - 0.005 * e,
                   mAP=lambda e: 0.031 + 0.001 * (e % 3 == 0) - 0.002 * (e == 20))
    run_dir = make_run(tmp_path, history, hyper=config(lr=1e-5), overrides=["experiment=demo", "optimizer.lr=1e-05"])
    assert main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    diagnosis = diagnose(load_run(run_dir))
    assert diagnosis.codes == [CE_AT_CHANCE]
    finding = diagnosis.findings[0]
    assert finding.title == "CE near ln(num_classes) for 20 epochs: the classifier is not learning"
    assert finding.evidence.startswith("CE stayed at 6.70-6.75 for 20 consecutive epochs (epochs 1-20) and it is "
                                       "still there at the last epoch, while ln(751) = 6.62")
    assert "learning rate is too low (optimizer.lr=1e-05)" in finding.meaning
    lines = out.splitlines()
    sweep_line = lines.index("  python -m reid.train --multirun sweep=plateau experiment=demo optimizer.lr=1e-05")
    assert lines[sweep_line + 1].startswith("  Its variants that test these fixes, most likely first: "
                                            "smaller_batch_higher_lr, aggressive_lr_drop, higher_lr (")
    assert "  python -m reid.train experiment=demo optimizer.lr=0.0001    # ce_at_chance: ten times the learning rate" \
        in out.splitlines()
    assert (run_dir / "PLATEAU_DIAGNOSIS.txt").read_text().splitlines()[0] == "PLATEAU DIAGNOSIS"


def test_triplet_stuck_at_its_margin_means_collapse(tmp_path):
    history = rows(20, lr=lambda e: 3.5e-3, ce=lambda e: None, tri=lambda e: 0.9 if e < 3 else 0.3 + 0.001 * (e % 2),
                   mAP=lambda e: 0.02 + 0.001 * (e % 4 == 0) - 0.002 * (e == 20))
    run = load_run(make_run(tmp_path, history, hyper=config(lr=3.5e-3, ce_weight=0.0)))
    diagnosis = diagnose(run)
    assert diagnosis.codes == [COLLAPSE]
    assert diagnosis.findings[0].evidence.startswith(
        "The triplet loss sat at 0.300-0.301 for 18 consecutive epochs (epochs 3-20), equal to its margin 0.3")
    assert [fix.overrides for fix in diagnosis.findings[0].fixes] == [["optimizer.lr=0.00035"], ["loss.ce_weight=1.0"]]


def test_collapse_leads_when_ce_is_also_at_chance(tmp_path):
    history = rows(12, lr=lambda e: 3.5e-3, ce=lambda e: 6.62, tri=lambda e: 0.3,
                   mAP=lambda e: 0.02 + 0.001 * (e == 6))
    assert codes(tmp_path, history) == [COLLAPSE, CE_AT_CHANCE]


def test_ce_far_above_the_weighted_triplet(tmp_path):
    run = load_run(make_run(tmp_path, healthy(), hyper=config(triplet_weight=0.01)))
    diagnosis = diagnose(run)
    assert diagnosis.codes == [IMBALANCE]
    assert diagnosis.findings[0].evidence == (
        "Over epochs 1-3 the weighted CE term was 5.07 (1 x 5.07) and the weighted triplet term 0.00517 "
        "(0.01 x 0.517): CE is 980x larger (threshold 30x).")
    assert diagnosis.findings[0].fixes[0].overrides == ["loss.triplet_weight=0.98"]


def test_flat_map_while_the_loss_falls_is_overfitting(tmp_path):
    def peaked(e: int) -> float:
        return 0.62 * min(1.0, e / 20) - 0.0005 * max(0, e - 20)

    history = rows(40, lr=lambda e: LR, ce=lambda e: 0.9 * (6.0 - 5.0 * (e - 1) / 39),
                   tri=lambda e: 0.1 * (6.0 - 5.0 * (e - 1) / 39), mAP=peaked)
    diagnosis = diagnose(load_run(make_run(tmp_path, history)))
    assert diagnosis.codes == [OVERFITTING]
    assert diagnosis.findings[0].evidence == (
        "mAP did not improve over the last 4 evaluations (epochs 34-40: 0.6130 -> 0.6100, best gain -0.0010, "
        "threshold 0.005), while the training loss still fell 43% (1.769 -> 1.000 by epoch 40).")
    assert "best_model.pth keeps the best epoch (20, mAP 0.6200)" in diagnosis.findings[0].meaning
    assert diagnosis.findings[0].fixes[0].overrides == ["optimizer.weight_decay=0.0025"]


def test_lr_dropped_before_the_loss_settled(tmp_path):
    def loss(e: int) -> float:
        return 6.6 - 0.4 * (e - 1) if e <= 10 else 3.0 - 0.02 * (e - 10)

    history = rows(40, lr=lambda e: LR if e <= 10 else LR / 10, ce=lambda e: 0.85 * loss(e),
                   tri=lambda e: 0.15 * loss(e), mAP=lambda e: 0.35 * min(1.0, e / 12) - 0.001 * (e == 40))
    hyper = config()
    hyper["scheduler"]["milestones"] = [10]
    diagnosis = diagnose(load_run(make_run(tmp_path, history, hyper=hyper)))
    assert diagnosis.codes == [LR_DROPPED_EARLY]
    assert diagnosis.findings[0].evidence.startswith(
        "The LR dropped from 3.50e-04 to 3.50e-05 at epoch 11 while the loss was still falling: 29% over the 3 "
        "epochs before it (epoch 7: 4.200 -> epoch 10: 3.000")
    assert [fix.overrides for fix in diagnosis.findings[0].fixes] == [["scheduler.milestones=[20]"],
                                                                      ["scheduler=cosine"]]


def test_still_improving_at_the_end_says_train_longer(tmp_path, capsys):
    history = rows(20, lr=lambda e: LR, ce=lambda e: 1.2 + 5.4 * math.exp(-(e - 1) / 3),
                   tri=lambda e: 0.05 + 0.6 * math.exp(-(e - 1) / 4), mAP=lambda e: 0.1 + 0.025 * e)
    run_dir = make_run(tmp_path, history)
    assert main([str(run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert diagnose(load_run(run_dir)).codes == [NEEDS_MORE_EPOCHS]
    assert lines[lines.index("Next command (train longer):") + 1] == (
        "  python -m reid.train experiment=demo optimizer.lr=0.00035 trainer.max_epochs=40")
    assert not any("--multirun" in line for line in lines)


def test_findings_follow_the_runs_monitor(tmp_path):
    """A val_top1-monitored run: its val_top1 still rises while mAP is flat, so it needs epochs, not a fix."""
    history = rows(20, lr=lambda e: LR, ce=lambda e: 1.2 + 5.4 * math.exp(-(e - 1) / 3),
                   tri=lambda e: 0.05 + 0.6 * math.exp(-(e - 1) / 4), mAP=lambda e: 0.5 - 0.001 * (e > 10))
    for row in history:
        row["val_top1"] = None if row["mAP"] is None else 0.25 + 0.025 * row["epoch"]
    run_dir = make_run(tmp_path, history)
    info = json.loads((run_dir / "model_info.json").read_text())
    (run_dir / "model_info.json").write_text(json.dumps({**info, "monitor": "val_top1", "best_value": 0.75,
                                                        "best_epoch": 20}))
    diagnosis = diagnose(load_run(run_dir))
    assert diagnosis.codes == [NEEDS_MORE_EPOCHS]
    assert diagnosis.findings[0].evidence.startswith(
        "val_top1 was still rising at the last evaluation: 0.7500 at epoch 20 of 20, +0.0500 over the best before it "
        "(0.7000 at epoch 18")
    assert "Epochs: 20 of 20; best val_top1 0.7500 at epoch 20" in diagnosis.render()
    (tmp_path / "as_map").mkdir()
    assert diagnose(load_run(make_run(tmp_path / "as_map", history))).codes == []  # monitoring mAP: healthy


def test_thresholds_are_flags(tmp_path, capsys):
    history = rows(20, lr=lambda e: 1e-5, ce=lambda e: 6.6, tri=lambda e: 0.9,
                   mAP=lambda e: 0.031 + 0.001 * (e % 3 == 0) - 0.002 * (e == 20))
    run_dir = make_run(tmp_path, history)
    assert main([str(run_dir), "--ce-epochs", "25"]) == 0
    assert "Findings: none" in capsys.readouterr().out
    assert main([str(run_dir), "--ce-tolerance", "0.001"]) == 0
    assert "Findings: none" in capsys.readouterr().out
    assert main([str(run_dir)]) == 0
    assert "1. CE near ln(num_classes) for 20 epochs" in capsys.readouterr().out
    with pytest.raises(ValueError, match="threshold ce_tolerance=1.5: expected a fraction between 0 and 1"):
        Thresholds(ce_tolerance=1.5)


def test_bad_run_dirs_fail_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2 and f"{tmp_path / 'nope'}: no such run directory" in capsys.readouterr().err
    run_dir = make_run(tmp_path, healthy())
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert f"no training_history.json; run directories below it: {run_dir.resolve()}" in capsys.readouterr().err
    (run_dir / "model_info.json").write_text("{oops")
    with pytest.raises(SystemExit):
        main([str(run_dir)])
    assert "model_info.json is not valid JSON" in capsys.readouterr().err
    info = {"overrides": [], "hyperparameters": {"loss": {"margin": "wide"}}}
    (run_dir / "model_info.json").write_text(json.dumps(info))
    with pytest.raises(SystemExit):
        main([str(run_dir)])
    assert "model_info.json: hyperparameters.loss.margin='wide': expected int or float" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(run_dir), "--flat-evals", "1"])
    assert "threshold flat_evals=1: expected at least 2 evaluations" in capsys.readouterr().err


def test_a_sweep_jobs_study_links_are_dropped_from_the_command(tmp_path, capsys):
    overrides = ["experiment=demo", "optimizer.lr=1e-05", "sweep_trial.storage='/o/plateau.journal'",
                 "sweep_trial.study_name='plateau'", "sweep_trial.trial_number=3"]
    history = rows(20, lr=lambda e: 1e-5, ce=lambda e: 6.7, tri=lambda e: 0.9,
                   mAP=lambda e: 0.031 + 0.001 * (e % 3 == 0) - 0.002 * (e == 20))
    assert main([str(make_run(tmp_path, history, overrides=overrides))]) == 0
    assert "  python -m reid.train --multirun sweep=plateau experiment=demo optimizer.lr=1e-05" in (
        capsys.readouterr().out.splitlines())


def test_commands_quote_shell_characters_and_replace_overrides():
    assert with_overrides(["experiment=demo", "optimizer.lr=1e-05"], ["optimizer.lr=0.0001", "x=1"]) == [
        "experiment=demo", "optimizer.lr=0.0001", "x=1"]
    from reid.selection.diagnosis import command

    assert command(["scheduler.milestones=[14]"], multirun=True) == (
        "python -m reid.train --multirun sweep=plateau 'scheduler.milestones=[14]'")


def test_a_running_run_is_diagnosed_provisionally(tmp_path):
    run_dir = make_run(tmp_path, healthy()[:12], status="running")
    text = diagnose(load_run(run_dir)).render()
    assert "Status: still running at epoch 12: findings are provisional." in text.splitlines()


def test_named_sweep_variants_exist_in_the_plateau_sweep(compose_config):
    from reid.selection.diagnosis import SWEEP_VARIANTS
    from reid.sweep.variants import plateau_variants

    names = {variant.name for variant in plateau_variants(compose_config("experiment=plateau_demo"))}
    assert {name for group in SWEEP_VARIANTS.values() for name in group} <= names
