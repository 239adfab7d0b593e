"""`python -m reid.evaluate`: a trained run's recorded mAP reproduced from its file, options, outputs, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import compose_named, train_env
from omegaconf import OmegaConf
from PIL import Image

from reid.checkpoint import BEST_MODEL, FINAL_MODEL, LAST_CHECKPOINT
from reid.errors import CheckpointError, ConfigError, DatasetError
from reid.evaluate import (
    CSV_COLUMNS,
    EVALUATION_CSV,
    EVALUATION_JSON,
    EVALUATION_TXT,
    evaluate,
    recorded_dataset,
    run_evaluation,
)
from reid.model_outputs import model_output_dir

# One epoch, evaluated on 6 of synthetic_tiny's 8 queries against 30 of its 46 gallery images.
RUN = ["experiment=smoke", "trainer.max_epochs=1", "trainer.limit_eval_queries=6", "trainer.limit_eval_gallery=30"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir) -> Path:
    """One tiny trained run (experiment=smoke, one epoch, evaluation limited) shared by the module."""
    from reid.train import train

    run = tmp_path_factory.mktemp("evaluated_run")
    train(compose_named("config", f"data_dir={data_dir}", *RUN), run_dir=run, overrides=[])
    return run


@pytest.fixture
def eval_config(data_dir):
    def _compose(*overrides: str):
        return compose_named("evaluate", f"data_dir={data_dir}", *overrides)

    return _compose


@pytest.fixture(scope="module")
def plain(run_dir, data_dir, tmp_path_factory):
    """The default evaluation of the run (its recorded data), written once."""
    out = tmp_path_factory.mktemp("plain_evaluation")
    cfg = compose_named("evaluate", f"data_dir={data_dir}", f"model={run_dir}")
    return evaluate(cfg, out), out


def test_reproduces_the_runs_recorded_best_metrics(plain, run_dir):
    evaluation, _ = plain
    info = json.loads((run_dir / "model_info.json").read_text())
    assert evaluation.trained.path == run_dir / BEST_MODEL
    assert evaluation.metrics["mAP"] == pytest.approx(info["best_map"], abs=1e-6)
    for key in ("rank1", "rank5", "rank10", "mINP"):
        assert evaluation.metrics[key] == pytest.approx(info["best_metrics"][key], abs=1e-6), key
    # The run's trainer.limit_eval_* budgets are honoured: the same 6 queries against 30 gallery images.
    assert (evaluation.num_query, len(evaluation.splits.gallery)) == (6, 30)
    assert evaluation.recorded_dataset and evaluation.settings["limit_eval_queries"] == 6


def test_writes_json_text_and_per_query_csv(plain):
    evaluation, out = plain
    record = json.loads((out / EVALUATION_JSON).read_text())
    assert set(record) >= {"model", "epoch", "architecture", "dataset", "settings", "metrics", "cmc", "num_queries",
                           "num_valid_queries", "num_excluded_queries", "recorded_metrics", "per_query_file"}
    assert list(record["metrics"]) == ["mAP", "rank1", "rank5", "rank10", "rank20", "mINP"]
    assert record["metrics"]["mAP"] == pytest.approx(evaluation.result.mAP)
    assert record["num_queries"] == 6 and record["dataset"]["gallery"] == 30 and len(record["cmc"]) == 30
    assert record["settings"]["distance"] == "euclidean" and record["settings"]["rerank"]["enabled"] is False
    assert record["dataset"]["name"] == "synthetic" and record["dataset"]["recorded"] is True

    rows = list(csv.DictReader((out / EVALUATION_CSV).open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 6 == evaluation.num_query
    assert [row["query_path"] for row in rows] == [r.path for r in evaluation.splits.query]
    aps = [float(row["ap"]) for row in rows if row["ap"]]
    assert np.mean(aps) == pytest.approx(record["metrics"]["mAP"], abs=1e-9)
    ranks = [int(row["first_match_rank"]) for row in rows if row["first_match_rank"]]
    assert np.mean([rank == 1 for rank in ranks]) == pytest.approx(record["metrics"]["rank1"])
    # synthetic: each query's identity shows 2 images in each of the 2 other cameras
    assert {int(row["num_positives"]) for row in rows} == {4}

    text = (out / EVALUATION_TXT).read_text()
    assert f"mAP     {record['metrics']['mAP']:.4f}" in text and "6 queries" in text
    assert "trainer.limit_eval_queries=6" in text


def test_explicit_dataset_scores_its_whole_query_and_gallery(run_dir, eval_config, tmp_path):
    evaluation = evaluate(eval_config(f"model={run_dir / FINAL_MODEL}", "dataset=synthetic_tiny", "distance=cosine"),
                          tmp_path)
    assert evaluation.trained.path.name == FINAL_MODEL and evaluation.trained.meta["epoch"] == 1
    assert not evaluation.recorded_dataset and evaluation.settings["limit_eval_queries"] is None
    assert evaluation.settings["distance"] == "cosine" and 0.0 < evaluation.metrics["mAP"] <= 1.0
    assert (evaluation.num_query, len(evaluation.splits.gallery)) == (8, 46)
    assert len((tmp_path / EVALUATION_CSV).read_text().splitlines()) == 1 + 8


def test_flip_and_rerank_give_valid_different_figures(plain, run_dir, eval_config):
    base = plain[0].metrics
    flipped = run_evaluation(eval_config(f"model={run_dir}", "flip=true"))
    reranked = run_evaluation(eval_config(f"model={run_dir}", "rerank=true", "rerank_k1=8", "rerank_k2=3"))
    for evaluation in (flipped, reranked):
        metrics = evaluation.metrics
        assert 0.0 < metrics["mAP"] <= 1.0 and 0.0 <= metrics["rank1"] <= metrics["rank5"] <= metrics["rank20"] <= 1
        assert evaluation.num_query == 6
    assert flipped.metrics["mAP"] != pytest.approx(base["mAP"], abs=1e-9)
    assert reranked.metrics["mAP"] != pytest.approx(base["mAP"], abs=1e-9)
    assert flipped.settings["flip"] and reranked.settings["rerank"] == {"enabled": True, "k1": 8, "k2": 3,
                                                                        "lambda_value": 0.3}
    # Re-ranked distances are a different matrix over the same pairs.
    assert reranked.distances.shape == plain[0].distances.shape
    assert not torch.allclose(reranked.distances, plain[0].distances)


def test_output_dir_lies_beside_the_model(run_dir):
    by_dir = Path(model_output_dir("evaluations", str(run_dir), ["dataset=synthetic_tiny", "flip=true"]))
    assert by_dir.parent == run_dir / "evaluations" and by_dir.name.endswith("_synthetic_tiny")
    by_file = Path(model_output_dir("evaluations", str(run_dir / FINAL_MODEL), []))
    assert by_file.parent == run_dir / "evaluations" and not by_file.exists()
    with pytest.raises(ConfigError, match="model= is missing"):
        model_output_dir("evaluations", None, [])


def test_recorded_root_inside_the_runs_data_dir_follows_data_dir():
    config = OmegaConf.create({"data_dir": "data", "dataset": {"_target_": "x.Y", "root": "data/synthetic"}})
    trained = SimpleNamespace(config=config, path=Path("best_model.pth"))
    assert recorded_dataset(trained, "/mnt/sets").root == str(Path("/mnt/sets/synthetic"))
    assert recorded_dataset(trained, "data").root == "data/synthetic"
    config.dataset.root = "/elsewhere/market"
    assert recorded_dataset(trained, "/mnt/sets").root == "/elsewhere/market"


def test_user_errors_name_what_is_wrong(run_dir, eval_config, tmp_path):
    with pytest.raises(ConfigError, match="model= is missing"):
        run_evaluation(eval_config())
    with pytest.raises(ConfigError, match="distance='manhattan': expected one of euclidean, cosine"):
        run_evaluation(eval_config(f"model={run_dir}", "distance=manhattan"))
    with pytest.raises(CheckpointError, match="no such file or directory"):
        run_evaluation(eval_config(f"model={tmp_path}/gone.pth"))
    with pytest.raises(CheckpointError, match=f"{LAST_CHECKPOINT} is not a reid model file"):
        run_evaluation(eval_config(f"model={run_dir / LAST_CHECKPOINT}"))

    payload = torch.load(run_dir / BEST_MODEL, weights_only=True)
    payload["architecture"]["backbone"] = "resnet34"
    torch.save(payload, tmp_path / "other_architecture.pth")
    with pytest.raises(CheckpointError, match="other_architecture.pth was saved for a different model: backbone"):
        run_evaluation(eval_config(f"model={tmp_path / 'other_architecture.pth'}"))
    payload["architecture"]["backbone"] = "resnet18"
    del payload["state_dict"][next(iter(payload["state_dict"]))]
    torch.save(payload, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="cut.pth does not fit this model: 1 keys missing"):
        run_evaluation(eval_config(f"model={tmp_path / 'cut.pth'}"))

    # A folders dataset whose identities have one image each: nothing to hold out as query and gallery.
    for name in ("ann", "bob", "cyd"):
        (tmp_path / "faces" / name).mkdir(parents=True)
        Image.new("RGB", (32, 64), (90, 40, 200)).save(tmp_path / "faces" / name / "0.jpg")
    with pytest.raises(DatasetError, match="empty query or gallery"):
        run_evaluation(eval_config(f"model={run_dir}", "dataset=folders", f"dataset.root={tmp_path / 'faces'}",
                                   "dataset.min_images_per_identity=1"))


def test_cli_reports_a_file_that_is_no_model_in_one_line(tmp_path, data_dir):
    notes = tmp_path / "notes.pth"
    notes.write_text("not a checkpoint")
    result = subprocess.run([sys.executable, "-m", "reid.evaluate", f"model={notes}"], cwd=tmp_path,
                            env=train_env(data_dir), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"reid.evaluate: error: {notes} is not a readable checkpoint")
