"""`python -m reid.export`: ONNX and TorchScript files that run without reid and embed as PyTorch does."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import compose_named, train_env
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

from reid.data.images import decode_resized
from reid.engine.evaluator import embed
from reid.errors import CheckpointError, ExportError
from reid.export import OnnxFormat, TorchScriptFormat, export, export_model, main
from reid.inference import FeatureExtractor
from reid.models.loading import load_trained_model

# One model of each backbone family reid ships: timm ResNet, open_clip ViT (position embeddings interpolated to
# the 64 x 32 ReID grid), open_clip ModifiedResNet (attention pool, its embeddings interpolated too).
FAMILIES = {
    "timm_resnet": ("backbone=resnet18",),
    "clip_vit": ("backbone=clip_vit_b16", "backbone.model_name=ViT-S-16"),
    "clip_modified_resnet": ("backbone=clip_rn50",),
}
TOLERANCE = 1e-4

# Runs exported files with reid made unimportable: argv = (kind, model file, inputs .npy, outputs .npy) ...; each
# file embeds the first input alone, then the next three as one batch.
WITHOUT_REID = """
import sys
sys.modules["reid"] = None
import numpy as np, onnxruntime, torch
for kind, model_path, inputs_path, outputs_path in zip(*[iter(sys.argv[1:])] * 4):
    inputs = np.load(inputs_path)
    if kind == "onnx":
        session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        run = lambda batch: session.run(None, {"images": batch})[0]
    else:
        module = torch.jit.load(model_path)
        run = lambda batch: module(torch.from_numpy(batch)).detach().numpy()
    np.save(outputs_path, np.concatenate([run(inputs[:1]), run(inputs[1:4])]))
"""


@pytest.fixture(scope="module")
def extractor_of(untrained_model_file):
    """A factory: the FeatureExtractor (PyTorch) of a backbone family's model file, loaded once per module."""
    loaded: dict[str, FeatureExtractor] = {}

    def _extractor(family: str) -> FeatureExtractor:
        if family not in loaded:
            loaded[family] = FeatureExtractor(untrained_model_file(*FAMILIES[family]))
        return loaded[family]

    return _extractor


@pytest.fixture(scope="module")
def images(extractor_of) -> list[str]:
    """Four query images of the synthetic set, the test data."""
    dataset = extractor_of("timm_resnet").trained.config.dataset
    return [record.path for record in instantiate(dataset).load().query[:4]]


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_matches_pytorch_for_every_backbone_family(family, extractor_of, images, tmp_path):
    extractor = extractor_of(family)
    result = export_model(extractor.trained, OnnxFormat(), tmp_path)
    assert result.path == tmp_path / "best_model.onnx"
    contract = json.loads(result.contract_path.read_text())
    assert contract == result.contract and result.contract_path.name == "best_model.onnx.json"
    dim = extractor.embedding_dim
    assert contract["input"] == {"name": "images", "shape": ["batch", 3, 64, 32], "layout": "NCHW",
                                 "dtype": "float32", "values": contract["input"]["values"]}
    assert contract["output"] == {"name": "embeddings", "shape": ["batch", dim], "dtype": "float32",
                                  "l2_normalized": True}
    assert (contract["embedding_dim"], contract["opset"], contract["normalize_inside"]) == (dim, 17, False)
    assert (contract["camera_embedding_applied"], contract["source_model_has_camera_embedding"]) == (False, False)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert (graph_input.name, graph_input.type, graph_input.shape[1:]) == ("images", "tensor(float)", [3, 64, 32])
    batch = torch.stack([extractor.prepare(path) for path in images]).numpy()
    expected = extractor(images).numpy()
    for rows in (slice(0, 1), slice(1, 4)):
        np.testing.assert_allclose(session.run(None, {"images": batch[rows]})[0], expected[rows], atol=TOLERANCE,
                                   rtol=0)


def test_exported_files_run_without_reid(untrained_model_file, extractor_of, images, tmp_path, data_dir):
    run_dir = untrained_model_file(*FAMILIES["timm_resnet"])
    extractor = extractor_of("timm_resnet")
    # The command line writes an ONNX file that takes uint8 pixels and does normalisation and flip TTA inside.
    command = subprocess.run([sys.executable, "-m", "reid.export", f"model={run_dir}", "normalize_inside=true",
                              "flip=true", f"out_dir={tmp_path / 'onnx'}"], cwd=tmp_path, env=train_env(data_dir),
                             capture_output=True, text=True, timeout=300)
    assert command.returncode == 0, command.stderr[-3000:]
    onnx_file = tmp_path / "onnx" / "best_model.onnx"
    assert f"wrote {onnx_file} (input images: uint8 ['batch', 3, 64, 32]" in command.stdout
    contract = json.loads(onnx_file.with_name("best_model.onnx.json").read_text())
    assert (contract["format"], contract["normalize_inside"], contract["flip_tta"]) == ("onnx", True, True)
    assert contract["mean"] == [0.485, 0.456, 0.406] and contract["std"] == [0.229, 0.224, 0.225]
    # TorchScript of the raw embeddings (no L2) of normalised float input.
    script = export_model(extractor.trained, TorchScriptFormat(), tmp_path / "ts", l2_normalize=False)
    assert (script.contract["input"]["dtype"], script.contract["output"]["l2_normalized"]) == ("float32", False)
    pixels = np.stack([decode_resized(path, 64, 32).transpose(2, 0, 1) for path in images])
    batch = torch.stack([extractor.prepare(path) for path in images])
    with torch.no_grad():
        raw = embed(extractor.trained.model, batch).numpy()
    flipped = FeatureExtractor(extractor.trained, flip=True)(images).numpy()
    runs = {"onnx": (onnx_file, pixels, flipped), "torchscript": (script.path, batch.numpy(), raw)}
    arguments = []
    for kind, (path, inputs, _) in runs.items():
        np.save(tmp_path / f"{kind}_inputs.npy", inputs)
        arguments += [kind, str(path), str(tmp_path / f"{kind}_inputs.npy"), str(tmp_path / f"{kind}.npy")]
    ran = subprocess.run([sys.executable, "-c", WITHOUT_REID, *arguments], capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    for kind, (_, _, expected) in runs.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{kind}.npy"), expected, atol=TOLERANCE, rtol=0)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).max() > 0.1  # the TorchScript file really is unnormalised
    assert np.abs(flipped - extractor(images).numpy()).max() > 1e-3  # and the ONNX file really flips


def test_torchscript_of_an_open_clip_vit_keeps_a_dynamic_batch(extractor_of, images, tmp_path):
    extractor = extractor_of("clip_vit")
    module = torch.jit.load(export_model(extractor.trained, TorchScriptFormat(), tmp_path).path)
    batch = torch.stack([extractor.prepare(path) for path in images])
    expected = extractor(images)
    for rows in (slice(0, 1), slice(1, 4)):
        torch.testing.assert_close(module(batch[rows]), expected[rows], atol=TOLERANCE, rtol=0)


def test_export_errors_name_the_problem(untrained_model_file, tmp_path, monkeypatch, capsys):
    run_dir = untrained_model_file(*FAMILIES["timm_resnet"])
    with pytest.raises(MissingConfigException, match=r"(?s)Could not find 'format/tflite'.*onnx.*torchscript"):
        compose_named("export", f"model={run_dir}", "format=tflite")
    failed = r"\(resnet18\) to format=onnx failed: OnnxExporterError: .*opset 6.*format=torchscript"
    with pytest.raises(ExportError, match=failed):
        export(compose_named("export", f"model={run_dir}", f"out_dir={tmp_path}", "format.opset=6"))
    state_dict = tmp_path / "weights.pth"
    torch.save(load_trained_model(run_dir).model.state_dict(), state_dict)
    with pytest.raises(CheckpointError, match=f"{state_dict} is not a reid model file"):
        export(compose_named("export", f"model={state_dict}", f"out_dir={tmp_path}"))
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a model\n")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(compose_named("export", f"model={text_file}", f"out_dir={tmp_path}"))
    error = capsys.readouterr().err
    assert exited.value.code == 2 and error.startswith(f"reid.export: error: {text_file} is not a readable checkpoint")
    assert len(error.splitlines()) == 1
