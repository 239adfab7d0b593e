"""`python -m reid.select`: arguments, exit codes, an Optuna study, and one real tiny sweep end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from conftest import run_train
from test_records import write_run

from reid.select import main
from reid.selection.report import deployment_snippet

REPORTS = [f"BEST_MODEL_SELECTION.{suffix}" for suffix in ("csv", "md", "png", "txt")]


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """A small outputs/ tree: a single run and a sweep with a failed job, all found recursively."""
    root = tmp_path / "outputs"
    write_run(root / "demo" / "runs" / "a", best_map=0.55, rank1=0.9, overrides=["experiment=demo"])
    sweep = root / "smoke" / "multiruns" / "d"
    write_run(sweep / "0", best_map=0.62, rank1=0.7, overrides=["experiment=smoke", "optimizer.lr=0.001"])
    write_run(sweep / "1", best_map=0.40, kind="error", status="error", message="error: ValueError: boom",
              overrides=["experiment=smoke", "optimizer.lr=0.1"])
    return root


def test_selects_across_an_outputs_tree(outputs, capsys):
    assert main([str(outputs)]) == 0
    out = capsys.readouterr().out
    assert "WINNER: smoke/multiruns/d/0" in out
    assert sorted(p.name for p in outputs.iterdir() if p.is_file()) == REPORTS
    text = (outputs / "BEST_MODEL_SELECTION.txt").read_text()
    assert f"  Best model: {(outputs / 'smoke/multiruns/d/0/best_model.pth').resolve()}" in text.splitlines()
    assert "error: ValueError: boom" in text


def test_metric_and_out_flags(outputs, tmp_path, capsys):
    assert main([str(outputs), "--metric", "rank1", "--out", str(tmp_path / "report"), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str((outputs / "demo/runs/a/best_model.pth").resolve())
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == REPORTS
    assert not (outputs / "BEST_MODEL_SELECTION.txt").exists()


def _closed_run(run_dir: Path, best_map: float, val_top1: float, monitor: str = "val_top1") -> Path:
    metrics = {"mAP": best_map, "rank1": 0.8, "rank5": 0.9, "rank10": 1.0, "mINP": 0.3, "val_loss": 1.2,
               "val_top1": val_top1, "val_top5": 0.95}
    return write_run(run_dir, best_map=best_map, rank1=0.8, monitor=monitor, best_value=metrics[monitor],
                     best_metrics=metrics)


def test_metric_val_top1_ranks_closed_set_runs_and_is_the_default_for_them(tmp_path, capsys):
    write_run(tmp_path / "old" / "a", best_map=0.5)  # a record from before trainer.monitor
    _closed_run(tmp_path / "faces" / "a", best_map=0.70, val_top1=0.60)
    _closed_run(tmp_path / "faces" / "b", best_map=0.55, val_top1=0.90)
    assert main([str(tmp_path / "faces"), "--quiet"]) == 0  # every run monitored val_top1: ranked by it
    assert capsys.readouterr().out.strip() == str((tmp_path / "faces/b/best_model.pth").resolve())
    text = (tmp_path / "faces" / "BEST_MODEL_SELECTION.txt").read_text()
    assert "It has the highest best val_top1 (0.9000; runner-up 0.6000) of the 2 ranked runs." in text
    assert pd.read_csv(tmp_path / "faces" / "BEST_MODEL_SELECTION.csv")["val_top1"].tolist() == [0.9, 0.6]
    assert main([str(tmp_path / "faces"), "--metric", "mAP", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "faces/a/best_model.pth").resolve())
    # Mixed monitors: mAP by default, saying so; --metric val_top1 leaves the old run out, as it has no val_top1.
    assert main([str(tmp_path), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str((tmp_path / "faces/a/best_model.pth").resolve())
    assert "the runs were monitored on mAP, val_top1: ranked by mAP" in captured.err
    assert main([str(tmp_path), "--metric", "val_top1"]) == 0
    assert "old/a" in capsys.readouterr().out
    text = (tmp_path / "BEST_MODEL_SELECTION.txt").read_text()
    assert "WINNER: faces/b" in text and "no val_top1 recorded" in text


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and f"{tmp_path / 'missing'}: no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
    assert "give at least one DIR or --storage" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    assert "no run records (model_info.json / training_history.json) found" in capsys.readouterr().err
    assert list((tmp_path / "empty").iterdir()) == []


def test_only_failed_runs_give_no_winner_but_a_report(tmp_path, capsys):
    write_run(tmp_path / "sweep" / "0", best_map="nan", kind="diverged", status="diverged")
    assert main([str(tmp_path / "sweep"), "--quiet"]) == 1
    assert capsys.readouterr().out.strip() == "no winner"
    assert "NO WINNER" in (tmp_path / "sweep" / "BEST_MODEL_SELECTION.txt").read_text()


def test_reads_an_optuna_journal_with_variant_names(tmp_path, capsys):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = [write_run(tmp_path / "runs" / str(i), best_map=m) for i, m in enumerate((0.3, 0.5))]
    journal = tmp_path / "study.journal"
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(journal))), study_name="plateau",
                                direction="maximize")
    for run_dir, variant, value in zip(runs, ("lr_up", "lr_down"), (0.3, 0.5)):
        study.add_trial(create_trial(value=value, user_attrs={"run_dir": str(run_dir), "variant": variant}))

    assert main(["--storage", str(journal), "--out", str(tmp_path / "report")]) == 0
    lines = (tmp_path / "report" / "BEST_MODEL_SELECTION.txt").read_text().splitlines()
    assert "WINNER: trial 1" in lines and "  Variant: lr_down" in lines
    assert pd.read_csv(tmp_path / "report" / "BEST_MODEL_SELECTION.csv")["variant"].tolist() == ["lr_down", "lr_up"]


@pytest.mark.multiprocess
def test_real_sweep_end_to_end(tmp_path, data_dir, monkeypatch):
    """Two real smoke runs; the CSV parses, the PNG exists, the .txt names the right path, and its snippet runs."""
    result = run_train(["--multirun", "experiment=smoke", "optimizer.lr=1e-4,1e-3"], tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = sorted(path.parent for path in (tmp_path / "outputs").rglob("model_info.json"))
    assert len(run_dirs) == 2
    sweep = run_dirs[0].parent
    infos = {run_dir: json.loads((run_dir / "model_info.json").read_text()) for run_dir in run_dirs}
    expected = min(run_dirs, key=lambda d: (-infos[d]["best_map"], -infos[d]["best_rank1"],
                                            infos[d]["epochs_trained"], infos[d]["best_epoch"], d.name))

    select = subprocess.run([sys.executable, "-m", "reid.select", str(sweep)], capture_output=True, text=True,
                            timeout=120)

    assert select.returncode == 0, select.stderr
    frame = pd.read_csv(sweep / "BEST_MODEL_SELECTION.csv")
    assert len(frame) == 2 and frame["rank"].tolist() == [1, 2]
    assert frame["mAP"].tolist() == pytest.approx(sorted((i["best_map"] for i in infos.values()), reverse=True))
    assert frame["best_model"].iloc[0] == str(expected / "best_model.pth")
    assert sorted(frame["variant"]) == ["optimizer.lr=0.0001", "optimizer.lr=0.001"]
    assert (sweep / "BEST_MODEL_SELECTION.png").read_bytes()[:4] == b"\x89PNG"
    text = (sweep / "BEST_MODEL_SELECTION.txt").read_text()
    assert f"  Best model: {expected / 'best_model.pth'}" in text.splitlines()
    assert text in select.stdout

    snippet = deployment_snippet(expected / "best_model.pth")
    assert all(f"    {line}" in text.splitlines() for line in snippet)
    monkeypatch.chdir(tmp_path)
    shutil.copy(next(data_dir.rglob("*.jpg")), tmp_path / "person.jpg")
    namespace: dict = {}
    exec("\n".join(snippet), namespace)
    embedding = namespace["embedding"]
    assert embedding.shape == (1, 512) and torch.isfinite(embedding).all()
