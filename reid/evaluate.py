"""`python -m reid.evaluate model=<run dir | best_model.pth | model_final.pth> [dataset=<option>]`: score a
trained model.

The architecture, input size and normalisation come from the model file (reid.models.loading); the protocol is
the trainer's (reid.engine.evaluator, reid.metrics). Without `dataset=` the model is scored on what its run
evaluated during training: the recorded dataset, with the run's `trainer.limit_eval_queries/gallery`, so the
figures reproduce the run's recorded ones. Options: `distance=`, `flip=true` (flip test-time augmentation),
`rerank=true` (k-reciprocal re-ranking, `rerank_k1/k2/lambda`), `device=`, `precision=`. Writes EVALUATION.json,
EVALUATION.txt and EVALUATION_QUERIES.csv (one row per query) into
`<run dir>/evaluations/<date>_<time>[_<dataset option>]/` (`hydra.run.dir=...` for another place).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from reid.checkpoint import atomic_write_text
from reid.cli import exit_on_user_error
from reid.config import DataConfig, check_target_node, register_configs
from reid.data.loaders import build_test_loader
from reid.data.records import ReidSplits
from reid.engine.acceleration import memory_format_for
from reid.engine.build import resolve_device
from reid.engine.evaluator import extract_features, ranking_metrics
from reid.engine.precision import resolve_precision
from reid.errors import CheckpointError, ConfigError, DatasetError
from reid.metrics import RankResult, compute_distance_matrix, evaluate_rank, re_rank
from reid.metrics.distance import METRICS
from reid.model_outputs import MISSING_MODEL, register_output_resolver
from reid.models.loading import TrainedModel, load_trained_model

log = logging.getLogger("reid")

PROGRAM = "reid.evaluate"
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

EVALUATIONS = "evaluations"
EVALUATION_JSON = "EVALUATION.json"
EVALUATION_TXT = "EVALUATION.txt"
EVALUATION_CSV = "EVALUATION_QUERIES.csv"
CSV_COLUMNS = ("query_index", "query_path", "pid", "camid", "ap", "first_match_rank", "num_positives")
# The CMC ranks reported; the CMC curve is kept up to MAX_RANK (or the gallery's size).
CMC_RANKS = (1, 5, 10, 20)
MAX_RANK = 50


register_configs()
register_output_resolver("reid_evaluation_dir", EVALUATIONS, PROGRAM)


@dataclass
class Evaluation:
    """A scored model: what was evaluated, how, and the protocol's result with its per-query figures."""

    trained: TrainedModel
    splits: ReidSplits
    dataset_config: dict[str, Any]
    recorded_dataset: bool
    settings: dict[str, Any]
    distances: torch.Tensor
    result: RankResult

    @property
    def metrics(self) -> dict[str, float]:
        return ranking_metrics(self.result, CMC_RANKS)

    @property
    def num_query(self) -> int:
        return len(self.splits.query)


def check_options(cfg: DictConfig) -> None:
    """Refuse a bad option before any file is read."""
    if not cfg.model:
        raise ConfigError(MISSING_MODEL)
    if cfg.distance is not None and cfg.distance not in METRICS:
        raise ConfigError(f"distance={cfg.distance!r}: expected one of {', '.join(METRICS)} (default: the run's "
                          "data.distance)")
    if cfg.rerank_k1 < 1 or cfg.rerank_k2 < 1 or not 0.0 <= cfg.rerank_lambda <= 1.0:
        raise ConfigError(f"rerank_k1={cfg.rerank_k1}, rerank_k2={cfg.rerank_k2}, rerank_lambda={cfg.rerank_lambda}: "
                          "expected k1 >= 1, k2 >= 1 and lambda in [0, 1] (defaults 20, 6, 0.3)")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size}: expected an integer >= 1, or null for the run's "
                          "data.test_batch_size")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise ConfigError(f"num_workers={cfg.num_workers}: expected an integer >= 0, or null for the run's "
                          "data.num_workers")


def recorded_dataset(trained: TrainedModel, data_dir: str) -> DictConfig:
    """The run's own dataset config; a root inside the run's data_dir is moved into `data_dir`, so a run trained
    with the default `data/` is found from wherever `data_dir` (or REID_DATA_DIR) now points."""
    if not isinstance(trained.config.get("dataset"), DictConfig):
        raise CheckpointError(f"{trained.path} records no dataset config; pass dataset=<option> to choose the data")
    dataset = OmegaConf.create(OmegaConf.to_container(trained.config.dataset))
    run_data_dir, root = trained.config.get("data_dir"), dataset.get("root")
    if run_data_dir and root and str(run_data_dir) != str(data_dir):
        try:
            inside = Path(str(root)).relative_to(str(run_data_dir))
        except ValueError:
            return dataset
        dataset.root = str(Path(data_dir) / inside)
    return dataset


def load_splits(dataset: DictConfig, limits: tuple[int | None, int | None]) -> ReidSplits:
    """The query and gallery of `dataset`, within the debug budgets `limits` (queries, gallery images)."""
    check_target_node(dataset, "dataset")
    splits = instantiate(dataset).load()
    if not splits.query or not splits.gallery:
        raise DatasetError(f"dataset {splits.name} ({splits.root}) has {len(splits.query)} query and "
                           f"{len(splits.gallery)} gallery images: evaluation needs both (a Market-1501 query/ and "
                           "bounding_box_test/, or held-out identities of a folders dataset)")
    if any(limit is not None for limit in limits):
        splits = splits.limit_evaluation(*limits)
        log.info("evaluating %d queries against %d gallery images (the run's trainer.limit_eval_queries=%s, "
                 "trainer.limit_eval_gallery=%s)", len(splits.query), len(splits.gallery), *limits)
    return splits


def loader_data_config(trained: TrainedModel, cfg: DictConfig) -> DictConfig:
    """The run's `data` section (input size, pipeline, cache; keys an older file lacks at their defaults), with
    this command's batch size and workers."""
    defaults = OmegaConf.to_container(OmegaConf.structured(DataConfig))
    data = OmegaConf.merge(OmegaConf.create(defaults), trained.config.get("data") or {})
    if cfg.batch_size is not None:
        data.test_batch_size = cfg.batch_size
    if cfg.num_workers is not None:
        data.num_workers = cfg.num_workers
    return data


def query_gallery_distances(cfg: DictConfig, features: torch.Tensor, num_query: int, metric: str,
                            device: torch.device) -> torch.Tensor:
    """The plain distances the trainer ranks by, or (rerank=true) their k-reciprocal re-ranking, on `device`."""
    query, gallery = features[:num_query], features[num_query:]
    if not cfg.rerank:
        return compute_distance_matrix(query, gallery, metric=metric)
    try:
        return re_rank(query.to(device), gallery.to(device), k1=cfg.rerank_k1, k2=cfg.rerank_k2,
                       lambda_value=cfg.rerank_lambda, metric=metric).cpu()
    except ValueError as exc:
        raise ConfigError(f"rerank_k1={cfg.rerank_k1}, rerank_k2={cfg.rerank_k2}, "
                          f"rerank_lambda={cfg.rerank_lambda}: {exc}") from None


def run_evaluation(cfg: DictConfig) -> Evaluation:
    """Load the model and the data, embed, rank and score; nothing is written."""
    check_options(cfg)
    device = resolve_device(cfg.device, key="device")
    precision = resolve_precision(cfg.precision, None, device)
    trained = load_trained_model(cfg.model, device)
    recorded = cfg.dataset is None
    if recorded:
        dataset = recorded_dataset(trained, cfg.data_dir)
        trainer = trained.config.get("trainer") or {}
        limits = (trainer.get("limit_eval_queries"), trainer.get("limit_eval_gallery"))
    else:
        dataset, limits = cfg.dataset, (None, None)
    splits = load_splits(dataset, limits)
    data = loader_data_config(trained, cfg)
    loader, transform = build_test_loader(splits, data, device)
    channels_last = bool(OmegaConf.select(trained.config, "trainer.channels_last", default=True))
    memory_format = memory_format_for(trained.model, channels_last)
    trained.model.to(memory_format=memory_format)
    metric = cfg.distance or data.distance
    log.info("evaluating %s on %s (%d queries, %d gallery images): distance=%s flip=%s rerank=%s, %s, precision %s",
             trained.path, splits.name, len(splits.query), len(splits.gallery), metric, cfg.flip, cfg.rerank, device,
             precision.name)
    features, pids, camids = extract_features(trained.model, loader, device, precision, memory_format, transform,
                                              flip=cfg.flip)
    q = len(splits.query)
    distances = query_gallery_distances(cfg, features, q, metric, device)
    try:
        result = evaluate_rank(distances, pids[:q], pids[q:], camids[:q], camids[q:],
                               max_rank=min(MAX_RANK, distances.shape[1]), per_query=True)
    except ValueError as exc:
        raise DatasetError(f"dataset {splits.name} ({splits.root}): {exc}; expected queries whose identity the "
                           "gallery shows under another camera") from None
    settings = {
        "distance": metric, "flip": bool(cfg.flip),
        "rerank": {"enabled": bool(cfg.rerank), "k1": cfg.rerank_k1, "k2": cfg.rerank_k2,
                   "lambda_value": cfg.rerank_lambda},
        "device": str(device), "precision": precision.name, "channels_last": memory_format == torch.channels_last,
        "batch_size": data.test_batch_size, "num_workers": data.num_workers,
        "limit_eval_queries": limits[0], "limit_eval_gallery": limits[1],
    }
    return Evaluation(trained, splits, OmegaConf.to_container(dataset, resolve=True), recorded, settings, distances,
                      result)


def evaluation_record(evaluation: Evaluation) -> dict[str, Any]:
    """What EVALUATION.json holds."""
    splits, result = evaluation.splits, evaluation.result
    return {
        "model": str(evaluation.trained.path.resolve()),
        "epoch": evaluation.trained.meta.get("epoch"),
        "architecture": evaluation.trained.model.architecture,
        "dataset": {"name": splits.name, "root": str(splits.root), "recorded": evaluation.recorded_dataset,
                    "config": evaluation.dataset_config, "queries": len(splits.query),
                    "gallery": len(splits.gallery)},
        "settings": evaluation.settings,
        "metrics": evaluation.metrics,
        "cmc": [float(value) for value in result.cmc],
        "num_queries": evaluation.num_query,
        "num_valid_queries": result.num_valid_queries,
        "num_excluded_queries": result.num_excluded_queries,
        "recorded_metrics": evaluation.trained.best_metrics,
        "per_query_file": EVALUATION_CSV,
    }


def per_query_csv(evaluation: Evaluation) -> str:
    """One row per query evaluated; AP and first-match rank are empty for a query without a positive."""
    per_query = evaluation.result.per_query
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for index, record in enumerate(evaluation.splits.query):
        valid = bool(per_query.valid[index])
        writer.writerow([index, record.path, record.pid, record.camid,
                         repr(float(per_query.ap[index])) if valid else "",
                         int(per_query.first_match[index]) if valid else "",
                         int(per_query.num_positives[index])])
    return out.getvalue()


def _metrics_line(metrics: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.4f}" for name, value in metrics.items() if isinstance(value, (int, float)))


def render_text(evaluation: Evaluation) -> str:
    """EVALUATION.txt, also printed: what was scored, how, and the figures."""
    splits, result, settings = evaluation.splits, evaluation.result, evaluation.settings
    rerank = settings["rerank"]
    source = "the run's own evaluation data" if evaluation.recorded_dataset else "dataset chosen with dataset="
    lines = [
        f"Evaluation of {evaluation.trained.path} (epoch {evaluation.trained.meta.get('epoch')})",
        f"Dataset: {splits.name} ({splits.root}), {source}: {evaluation.num_query} queries "
        f"({result.num_valid_queries} scored, {result.num_excluded_queries} without a match in the gallery), "
        f"{len(splits.gallery)} gallery images",
        f"Settings: distance={settings['distance']} flip={str(settings['flip']).lower()} "
        f"rerank={str(rerank['enabled']).lower()}"
        + (f" (k1={rerank['k1']} k2={rerank['k2']} lambda={rerank['lambda_value']})" if rerank["enabled"] else "")
        + f", device {settings['device']}, precision {settings['precision']}",
    ]
    if settings["limit_eval_queries"] or settings["limit_eval_gallery"]:
        lines.append(f"Limits recorded by the run: trainer.limit_eval_queries={settings['limit_eval_queries']} "
                     f"trainer.limit_eval_gallery={settings['limit_eval_gallery']}")
    lines.append("")
    metrics = evaluation.metrics
    width = max(len(name) for name in metrics)
    lines += [f"{name.ljust(width)}  {value:.4f}" for name, value in metrics.items()]
    recorded = evaluation.trained.best_metrics
    if recorded:
        epoch = evaluation.trained.meta.get("epoch")
        lines += ["", f"Recorded with the file (epoch {epoch}): {_metrics_line(recorded)}"]
    lines += ["", f"Per query: {EVALUATION_CSV}"]
    return "\n".join(lines) + "\n"


def write_evaluation(evaluation: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """EVALUATION.json, EVALUATION.txt and EVALUATION_QUERIES.csv in `out_dir`."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / EVALUATION_JSON, "text": out_dir / EVALUATION_TXT, "csv": out_dir / EVALUATION_CSV}
    atomic_write_text(paths["json"], json.dumps(evaluation_record(evaluation), indent=2) + "\n")
    atomic_write_text(paths["text"], render_text(evaluation))
    atomic_write_text(paths["csv"], per_query_csv(evaluation))
    return paths


def evaluate(cfg: DictConfig, out_dir: str | Path) -> Evaluation:
    """Score the model `cfg.model` names, print the figures and write the evaluation files into `out_dir`."""
    evaluation = run_evaluation(cfg)
    paths = write_evaluation(evaluation, out_dir)
    print(render_text(evaluation), end="")
    print("Wrote " + ", ".join(str(path) for path in paths.values()))
    return evaluation


def hydra_main(cfg: DictConfig, program: str, command: Any) -> float:
    """Run `command(cfg, output dir)` as a Hydra job; a user's mistake ends a single run with one line."""
    try:
        evaluation = command(cfg, HydraConfig.get().runtime.output_dir)
    except Exception as exc:
        if HydraConfig.get().mode == RunMode.RUN:
            exit_on_user_error(exc, program)
        raise
    return float(evaluation.result.mAP)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> float:
    return hydra_main(cfg, PROGRAM, evaluate)


if __name__ == "__main__":
    main()
