"""`python -m reid.extract model=<run dir or model file> [dataset=<option>] [split=query+gallery|train|all]`.

Writes the trained model's L2-normalised embeddings of a dataset split to `features.npy` (float32, N x D) and,
row for row, an index of path, pid, camid and split: `index.parquet` where pyarrow is installed, else
`index.csv`. The dataset defaults to the one recorded in the model file's config. The embeddings come from
reid.inference.FeatureExtractor, so they equal the evaluation's.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from reid.checkpoint import atomic_write
from reid.cli import reports_user_errors
from reid.data.records import ImageRecord, ReidSplits
from reid.errors import ConfigError
from reid.inference import FeatureExtractor
from reid.model_outputs import MISSING_MODEL, register_output_resolver

log = logging.getLogger("reid")

PROGRAM = "reid.extract"
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# The Hydra run dir, beside the model: <run dir>/features/<date>_<time>[_<dataset option>].
FEATURES_DIR = "features"

# `split=`: the subsets written, in this order (query+gallery is the evaluation's order).
SPLITS = {"query+gallery": ("query", "gallery"), "train": ("train",), "all": ("train", "query", "gallery")}
FEATURES_FILE = "features.npy"

register_output_resolver("reid_features_dir", FEATURES_DIR, PROGRAM)

@dataclass
class Extraction:
    """What one extraction wrote."""

    features: Path
    index: Path
    count: int
    dim: int


def subsets_of(split: str) -> tuple[str, ...]:
    """The subsets `split=` names, in the written order."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    return SPLITS[split]


def selected_records(splits: ReidSplits, split: str) -> list[tuple[str, ImageRecord]]:
    """(subset name, record) of every image `split` selects, in the written order."""
    return [(subset, record) for subset in subsets_of(split) for record in getattr(splits, subset)]


def write_index(index: pd.DataFrame, out_dir: Path) -> Path:
    """`index.parquet` if pyarrow is importable, else `index.csv` (pandas writes both)."""
    if importlib.util.find_spec("pyarrow") is not None:
        path = out_dir / "index.parquet"
        atomic_write(path, lambda handle: index.to_parquet(handle, index=False))
    else:
        path = out_dir / "index.csv"
        atomic_write(path, lambda handle: index.to_csv(handle, index=False), mode="w")
    return path


def extract(cfg: DictConfig) -> Extraction:
    """Embed the configured split with the configured model; write features and index into `cfg.out_dir`."""
    if OmegaConf.is_missing(cfg, "model"):
        raise ConfigError(MISSING_MODEL)
    subsets_of(cfg.split)
    extractor = FeatureExtractor(cfg.model, device=cfg.device, flip=cfg.flip, batch_size=cfg.batch_size,
                                 precision=str(cfg.precision))
    dataset_cfg = cfg.dataset if cfg.get("dataset") is not None else extractor.trained.config.dataset
    splits = instantiate(dataset_cfg).load()
    chosen = selected_records(splits, cfg.split)
    log.info("embedding the %d %s images of %s with %s (flip=%s)", len(chosen), cfg.split, splits.name,
             extractor.trained.path, cfg.flip)
    features = extractor.embed_records([record for _, record in chosen], num_workers=cfg.num_workers).numpy()
    out_dir = Path(cfg.out_dir)
    features_path = out_dir / FEATURES_FILE
    atomic_write(features_path, lambda handle: np.save(handle, features.astype(np.float32)))
    index = pd.DataFrame({"path": [record.path for _, record in chosen],
                          "pid": [record.pid for _, record in chosen],
                          "camid": [record.camid for _, record in chosen],
                          "split": [subset for subset, _ in chosen]})
    return Extraction(features_path, write_index(index, out_dir), len(chosen), int(features.shape[1]))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="extract")
@reports_user_errors(PROGRAM)
def main(cfg: DictConfig) -> None:
    result = extract(cfg)
    print(f"{PROGRAM}: wrote {result.count} embeddings (dim {result.dim}, L2-normalised float32) to "
          f"{result.features}, and their index (path, pid, camid, split) to {result.index}")


if __name__ == "__main__":
    main()
