"""The ranking rule on fabricated runs: best mAP, ties to rank-1 then fewer epochs, failed runs set apart."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from reid.selection.ranking import (
    failure_reason,
    improvement_text,
    margin_text,
    rank_runs,
    variant_labels,
    why_winner,
)
from reid.selection.records import RunCollection, RunSummary


def run(label: str, mAP: float | None, rank1: float | None = 0.5, epochs: int | None = 10, *,
        mINP: float | None = 0.2, best_epoch: int | None = 5, kind: str | None = "completed",
        status: str = "finished", message: str = "", overrides: list[str] | None = None,
        variant: str | None = None, still_improving: bool | None = False) -> RunSummary:
    return RunSummary(
        label=label, path=Path("/runs") / label, status=status, best_map=mAP, best_epoch=best_epoch,
        best_metrics={"mAP": mAP, "rank1": rank1, "rank5": None, "rank10": None, "mINP": mINP},
        epochs_trained=epochs, max_epochs=epochs, stop_kind=kind, stop_message=message, training_seconds=60.0,
        still_improving=still_improving, overrides=overrides or [], variant=variant,
    )


def ranked(*runs: RunSummary, metric: str = "mAP"):
    return rank_runs(RunCollection(runs=list(runs)), metric)


def test_highest_map_wins():
    ranking = ranked(run("a", 0.50), run("b", 0.71), run("c", 0.64))
    assert [r.label for r in ranking.ranked] == ["b", "c", "a"]
    assert why_winner(ranking) == "It has the highest best mAP (0.7100; runner-up 0.6400) of the 3 ranked runs."
    assert margin_text(ranking) == ("Ahead of the runner-up (c) by 0.0700 mAP (0.7100 vs 0.6400, 10.9% relative). "
                                    "Also: rank-1 0.5000 vs 0.5000 (+0.0000).")


def test_a_tiny_lead_is_shown_with_enough_decimals():
    ranking = ranked(run("a", 0.065018), run("b", 0.065022))
    assert why_winner(ranking) == "It has the highest best mAP (0.065022; runner-up 0.065018) of the 2 ranked runs."
    assert margin_text(ranking).startswith(
        "Ahead of the runner-up (a) by 0.000004 mAP (0.065022 vs 0.065018, 0.0062% relative).")


def test_a_map_tie_goes_to_the_higher_rank1():
    ranking = ranked(run("a", 0.6, rank1=0.70), run("b", 0.6, rank1=0.80), run("c", 0.59, rank1=0.99))
    assert [r.label for r in ranking.ranked] == ["b", "a", "c"]
    assert why_winner(ranking) == "It ties with a on mAP and wins on rank-1 (0.8000 vs 0.7000)."
    assert margin_text(ranking).startswith("Level with the runner-up (a) on mAP (0.6000 each)")


def test_a_full_tie_goes_to_fewer_epochs():
    ranking = ranked(run("a", 0.6, 0.7, epochs=30), run("b", 0.6, 0.7, epochs=12), run("c", 0.6, 0.7, epochs=20))
    assert [r.label for r in ranking.ranked] == ["b", "c", "a"]
    assert why_winner(ranking) == "It ties with c on mAP and rank-1 and wins on fewer epochs trained (12 vs 20)."


def test_diverged_and_nan_runs_never_win():
    ranking = ranked(
        run("diverged", 0.95, kind="diverged", status="diverged", message="diverged: loss=nan at epoch 7, step 3"),
        run("nan", math.nan, rank1=math.nan),
        run("inf", math.inf),
        run("ok", 0.40),
    )
    assert ranking.winner.label == "ok" and [r.label for r in ranking.ranked] == ["ok"]
    assert [(r.label, reason) for r, reason in ranking.failed] == [
        ("diverged", "diverged: loss=nan at epoch 7, step 3"),
        ("inf", "diverged: best mAP is inf"),
        ("nan", "diverged: best mAP is nan"),
    ]
    assert why_winner(ranking) == "It is the only ranked run (best mAP 0.4000)."
    assert margin_text(ranking) == "There is no runner-up to compare with."


def test_failed_pruned_and_unevaluated_runs_are_listed_apart():
    ranking = ranked(
        run("oom", 0.9, kind="out_of_memory", status="out_of_memory", message="out of memory at batch size 64"),
        run("err", None, kind="error", status="error", message="error: ValueError: bad"),
        run("pruned", 0.8, kind="pruned", status="pruned", message="pruned by the sweep (trial 4)"),
        run("starting", None, kind=None, status="running"),
        run("going", 0.3, kind=None, status="running"),
        run("interrupted", 0.2, kind="interrupted", status="interrupted"),
    )
    assert [r.label for r in ranking.ranked] == ["going", "interrupted"]
    assert [(r.label, reason) for r, reason in ranking.failed] == [
        ("err", "error: ValueError: bad"),
        ("oom", "out_of_memory: out of memory at batch size 64"),
        ("pruned", "pruned by the sweep (trial 4)"),
    ]
    assert [(r.label, reason) for r, reason in ranking.pending] == [("starting", "running: no evaluation finished yet")]
    assert improvement_text(ranking.winner).startswith("It is still running (epoch 10 of 10 so far)")


@pytest.mark.parametrize("metric, winner", [("mAP", "a"), ("rank1", "b"), ("mINP", "c")])
def test_metric_flag_changes_what_leads(metric, winner):
    runs = [run("a", 0.7, 0.80, mINP=0.30), run("b", 0.6, 0.90, mINP=0.20), run("c", 0.5, 0.85, mINP=0.40)]
    assert ranked(*runs, metric=metric).winner.label == winner


def test_rank1_ties_go_to_map_and_missing_minp_is_pending():
    ranking = ranked(run("a", 0.5, 0.9), run("b", 0.6, 0.9), run("c", 0.7, 0.9, mINP=None), metric="mINP")
    assert [r.label for r in ranking.ranked] == ["b", "a"]
    assert [(r.label, reason) for r, reason in ranking.pending] == [("c", "no mINP recorded")]
    assert ranked(run("a", 0.5, 0.9), run("b", 0.6, 0.9), metric="rank1").winner.label == "b"


def test_winner_is_exactly_the_maximum_under_the_rule():
    rng = random.Random(7)
    for _ in range(200):
        runs = [run(f"r{i}", rng.choice([0.5, 0.6, 0.7, math.nan, None]), rng.choice([0.5, 0.8, None]),
                    rng.choice([5, 10, 20]), kind=rng.choice(["completed", "completed", "diverged", "pruned"]))
                for i in range(6)]
        eligible = [r for r in runs if r.stop_kind == "completed" and r.best_map is not None
                    and math.isfinite(r.best_map)]
        ranking = ranked(*runs)
        if not eligible:
            assert ranking.winner is None
            continue
        best = max(eligible, key=lambda r: (r.best_map, -1 if r.metric("rank1") is None else r.metric("rank1"),
                                            -r.epochs_trained))
        top = [r for r in eligible if (r.best_map, r.metric("rank1"), r.epochs_trained)
               == (best.best_map, best.metric("rank1"), best.epochs_trained)]
        assert ranking.winner.label == min(r.label for r in top)


def test_variant_names_are_the_overrides_that_differ():
    runs = [run("0", 0.5, overrides=["experiment=smoke", "optimizer.lr=0.001", "loss=ce_triplet"]),
            run("1", 0.6, overrides=["experiment=smoke", "optimizer.lr=0.01", "loss=ce_triplet"]),
            run("2", 0.7, overrides=["experiment=smoke", "optimizer.lr=0.01", "+trainer.grad_clip=5.0",
                                      "loss=ce_triplet"]),
            run("3", 0.4, overrides=["experiment=smoke"], variant="baseline")]
    labels = variant_labels(runs)
    assert [labels[id(r)] for r in runs] == ["optimizer.lr=0.001 loss=ce_triplet", "optimizer.lr=0.01 loss=ce_triplet",
                                             "optimizer.lr=0.01 loss=ce_triplet trainer.grad_clip=5.0", "baseline"]
    sampled = [run("s", 0.5, overrides=["optimizer.lr=0.0015160680420299528", "loss.ce_weight=0.96484744908038",
                                        "scheduler=cosine", "data.p=8"], variant="sampled"),
               run("h", 0.5, overrides=["optimizer.lr=0.0007", "data.p=4"], variant="higher_lr"),
               run("t", 0.5, overrides=["optimizer.lr=2.5e-05", "loss.ce_weight=1.0", "dataset.root=/data/v1.2"],
                   variant="sampled")]
    assert [variant_labels(sampled)[id(r)] for r in sampled] == [
        "sampled: optimizer.lr=0.001516 loss.ce_weight=0.9648 scheduler=cosine data.p=8", "higher_lr",
        "sampled: optimizer.lr=2.5e-05 loss.ce_weight=1.0 dataset.root=/data/v1.2"]
    same = [run("a", 0.5, overrides=["experiment=smoke"]), run("b", 0.5, overrides=["experiment=smoke"])]
    same[0].hyperparameters = {"optimizer": {"lr": 0.001}, "trainer": {"seed": 0}}
    same[1].hyperparameters = {"optimizer": {"lr": 0.002}, "trainer": {"seed": 0}, "sweep_trial": {"trial_number": 1}}
    assert [variant_labels(same)[id(r)] for r in same] == ["optimizer.lr=0.001", "optimizer.lr=0.002"]


def test_still_improving_is_reported_from_the_record():
    assert improvement_text(run("a", 0.5, best_epoch=10, still_improving=True)) == (
        "Yes: its best mAP came at its last evaluation (epoch 10; trained 10 of 10 epochs), so more epochs may "
        "pay: raise trainer.max_epochs.")
    assert improvement_text(run("a", 0.5, best_epoch=4, still_improving=False)).startswith(
        "No: its best mAP came at epoch 4")


def test_failure_reason_is_none_for_a_good_run():
    assert failure_reason(run("a", 0.5)) is None
