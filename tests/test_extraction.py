"""reid.inference.FeatureExtractor and `python -m reid.extract`: the evaluation's embeddings for any images."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_named, train_env
from hydra.utils import instantiate
from PIL import Image

from reid.data.images import decode_resized
from reid.data.loaders import build_loaders
from reid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from reid.engine.evaluator import extract_features
from reid.engine.precision import Precision
from reid.errors import CheckpointError, ConfigError
from reid.extract import extract
from reid.inference import FeatureExtractor
from reid.models.loading import load_trained_model


@pytest.fixture(scope="module")
def run_dir(untrained_model_file):
    return untrained_model_file("backbone=resnet18")


@pytest.fixture(scope="module")
def evaluation(run_dir):
    """The training code's evaluation path on the run's test loader: (paths, features, flipped features)."""
    trained = load_trained_model(run_dir)
    splits = instantiate(trained.config.dataset).load()
    loaders = build_loaders(splits, trained.config.data, seed=0)
    precision = Precision("32", "cpu")
    features, _, _ = extract_features(trained.model, loaders.test, torch.device("cpu"), precision)
    flipped, _, _ = extract_features(trained.model, loaders.test, torch.device("cpu"), precision, flip=True)
    paths = [record.path for record in splits.query + splits.gallery]
    return paths, F.normalize(features, dim=1), F.normalize(flipped, dim=1)


@pytest.fixture(scope="module")
def extractor(run_dir):
    return FeatureExtractor(run_dir, batch_size=7)


def test_extractor_equals_the_evaluation_path(run_dir, extractor, evaluation):
    paths, expected, expected_flipped = evaluation
    features = extractor(paths)
    assert features.dtype == torch.float32 and features.shape == (len(paths), 512) and len(paths) == 54
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(len(paths)), atol=1e-6, rtol=0)
    flipped = FeatureExtractor(extractor.trained, flip=True, batch_size=64)(paths)
    torch.testing.assert_close(flipped, expected_flipped, atol=1e-6, rtol=0)
    assert (flipped - features).abs().max() > 1e-3


def test_a_camera_embedding_model_gets_each_images_camera_as_in_its_evaluation(untrained_model_file):
    run_dir = untrained_model_file("backbone=clip_vit_b16", "backbone.model_name=ViT-S-16",
                                   "backbone.sie_coefficient=3.0")
    trained = load_trained_model(run_dir)
    splits = instantiate(trained.config.dataset).load()
    loaders = build_loaders(splits, trained.config.data, seed=0)
    expected, _, camids = extract_features(trained.model, loaders.test, torch.device("cpu"), Precision("32", "cpu"))
    evaluated = splits.query + splits.gallery
    chosen = list(range(0, len(evaluated), len(evaluated) // 6))[:6]  # spread over the split, so over cameras
    records = [evaluated[i] for i in chosen]
    extractor = FeatureExtractor(trained, batch_size=4)
    with_cameras = extractor([record.path for record in records], camids=[record.camid for record in records])
    torch.testing.assert_close(with_cameras, F.normalize(expected[chosen], dim=1), atol=1e-5, rtol=0)
    assert list(camids[chosen]) == [record.camid for record in records] and len(set(camids[chosen])) > 1
    torch.testing.assert_close(extractor.embed_records(records), with_cameras, atol=1e-5, rtol=0)
    without = extractor([record.path for record in records])
    assert (without - with_cameras).abs().max() > 1e-3  # the camera embedding is only added when ids are given
    with pytest.raises(ConfigError, match="camids: 2 camera ids for 6 images"):
        extractor([record.path for record in records], camids=[0, 1])


def test_paths_pil_images_and_tensors_agree(extractor, evaluation, tmp_path):
    source = Image.open(evaluation[0][0]).convert("RGB")
    assert source.size == (32, 64)
    # Another size, so the resize to the model's 64 x 32 runs; PNG, so the file holds exactly these pixels.
    big = source.resize((45, 130), Image.NEAREST)
    big_path, gray_path = tmp_path / "big.png", tmp_path / "gray.png"
    big.save(big_path)
    big.convert("L").save(gray_path)
    pixels = torch.from_numpy(np.array(big)).permute(2, 0, 1)
    resized = torch.from_numpy(decode_resized(str(big_path), 64, 32)).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalised = (resized.float() / 255 - mean) / std

    from_path = extractor([big_path])
    for other in (extractor(big), extractor(str(big_path)), extractor([pixels]), extractor(pixels[None]),
                  extractor([normalised])):
        torch.testing.assert_close(other, from_path, atol=1e-6, rtol=0)
    torch.testing.assert_close(extractor(big.convert("L")), extractor(gray_path), atol=0, rtol=0)
    assert (extractor(gray_path) - from_path).abs().max() > 1e-3
    assert extractor([]).shape == (0, 512)


def test_bad_inputs_name_what_was_expected(extractor):
    with pytest.raises(ConfigError, match=r"shape \(3, 64, 32\), got \(3, 60, 32\)"):
        extractor([torch.zeros(3, 60, 32)])
    with pytest.raises(ConfigError, match="uint8 3 x H x W .* got torch.int32"):
        extractor([torch.zeros(3, 64, 32, dtype=torch.int32)])
    with pytest.raises(ConfigError, match="cannot embed a int"):
        extractor([3])
    with pytest.raises(CheckpointError, match="no such file or directory"):
        FeatureExtractor("/nonexistent/run")


def test_extract_writes_features_and_index_of_every_split(run_dir, extractor, evaluation, tmp_path):
    paths, expected, _ = evaluation
    result = extract(compose_named("extract", f"model={run_dir}", f"out_dir={tmp_path}", "split=all", "num_workers=0",
                                     "device=cpu"))
    features = np.load(result.features)
    index = pd.read_csv(result.index)
    assert result.index.name == "index.csv"  # pyarrow is not installed here: CSV, not parquet
    assert features.dtype == np.float32 and features.shape == (102, 512) and result.count == 102
    assert list(index.columns) == ["path", "pid", "camid", "split"]
    assert index.split.value_counts().to_dict() == {"train": 48, "gallery": 46, "query": 8}
    assert list(index.path[48:]) == paths
    np.testing.assert_allclose(features[48:], expected.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(features[:5], extractor(list(index.path[:5])).numpy(), atol=1e-6, rtol=0)
    assert sorted(index.pid[:48].unique()) == list(range(8))  # train: the training labels
    with pytest.raises(ConfigError, match="split='val': expected one of query\\+gallery, train, all"):
        extract(compose_named("extract", f"model={run_dir}", f"out_dir={tmp_path}", "split=val"))


def test_extract_command(run_dir, evaluation, tmp_path, data_dir):
    out = tmp_path / "features"
    result = subprocess.run([sys.executable, "-m", "reid.extract", f"model={run_dir}", f"out_dir={out}", "flip=true",
                             "num_workers=0"], cwd=tmp_path, env=train_env(data_dir), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote 54 embeddings (dim 512, L2-normalised float32) to {out / 'features.npy'}" in result.stdout
    np.testing.assert_allclose(np.load(out / "features.npy"), evaluation[2].numpy(), atol=1e-6, rtol=0)
    assert pd.read_csv(out / "index.csv").split.tolist() == ["query"] * 8 + ["gallery"] * 46
