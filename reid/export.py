"""`python -m reid.export model=<run dir or model file> format=onnx|torchscript`: a trained model for deployment.

The exported graph takes a float32 N x 3 x height x width batch, normalised as the evaluation does
((pixel / 255 - mean) / std, RGB), with `normalize_inside=true` uint8 RGB pixels 0-255 instead (the
normalisation is then part of the graph); the batch axis is dynamic, height x width the run's `data.height x
data.width`. It returns float32 N x D embeddings, L2-normalised unless `l2_normalize=false`, with the
evaluator's flip test-time augmentation inside if `flip=true`. The file runs without reid (onnxruntime,
`torch.jit.load`); `<file>.json` beside it records this input contract.

The formats are the `format` config group (conf/format/), each a class with `suffix` and `write`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import hydra
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from reid.checkpoint import atomic_write, atomic_write_text
from reid.cli import reports_user_errors
from reid.engine.evaluator import embed
from reid.errors import ConfigError, ExportError, ReidError
from reid.model_outputs import MISSING_MODEL, register_output_resolver
from reid.models.loading import TrainedModel, load_trained_model

log = logging.getLogger("reid")

PROGRAM = "reid.export"
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# The Hydra run dir, beside the model: <run dir>/exports/<date>_<time>[_<dataset option>].
EXPORTS_DIR = "exports"

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
BATCH_AXIS = "batch"
# The batch traced for export: more than one image, so no size-1 batch gets specialised into the graph.
TRACE_BATCH = 2

register_output_resolver("reid_export_dir", EXPORTS_DIR, PROGRAM)

class DeployedEmbedding(nn.Module):
    """What an exported file computes: [uint8 pixels -> normalised input] -> model (with flip TTA) -> [L2]."""

    def __init__(self, trained: TrainedModel, normalize_inside: bool, flip: bool, l2_normalize: bool) -> None:
        super().__init__()
        self.model = trained.model
        self.normalize_inside = normalize_inside
        self.flip = flip
        self.l2_normalize = l2_normalize
        self.register_buffer("mean", torch.tensor(trained.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(trained.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalize_inside:
            # reid.data.transforms.normalize_batch's arithmetic, with mean and std as the graph's constants.
            images = images.float().div(255).sub(self.mean).div(self.std)
        embedding = embed(self.model, images, self.flip)
        return F.normalize(embedding, dim=1) if self.l2_normalize else embedding


class ExportFormat(Protocol):
    """A `format` option: the file's suffix, and how to write the traced graph; `write` returns the format's own
    facts for the input contract."""

    name: str
    suffix: str

    def write(self, graph: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]: ...


@contextlib.contextmanager
def without_mha_fastpath() -> Iterator[None]:
    """nn.MultiheadAttention (open_clip's ViT blocks) without its eval-mode fused kernel, which ONNX has no
    operator for (`aten::_native_multi_head_attention`): the traced graph then holds the plain matmul/softmax ops,
    which compute the same."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


class OnnxFormat:
    """ONNX through torch.onnx's TorchScript-based exporter (`dynamo=False`), which needs only the onnx package;
    the torch.export-based one needs onnxscript, which reid does not depend on. Opset 17 exports every backbone
    family reid ships (a test checks each in onnxruntime)."""

    name = "onnx"
    suffix = ".onnx"

    def __init__(self, opset: int = 17) -> None:
        self.opset = int(opset)

    def write(self, graph: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
        if importlib.util.find_spec("onnx") is None:
            raise ExportError("format=onnx needs the onnx package (torch.onnx writes the file with it): "
                              "pip install 'reid[export]' or pip install onnx")

        def export(handle: Any) -> None:
            with warnings.catch_warnings(), without_mha_fastpath():
                # The deprecation notices of the TorchScript-based exporter, chosen on purpose (see the class).
                warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                        category=DeprecationWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
                torch.onnx.export(graph, (example,), handle, dynamo=False, opset_version=self.opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}})

        atomic_write(path, export)
        return {"opset": self.opset, "runtime": "onnxruntime (or any ONNX runtime)"}


class TorchScriptFormat:
    """TorchScript by tracing (`torch.jit.trace`): load it with `torch.jit.load` in any torch program."""

    name = "torchscript"
    suffix = ".pt"

    def write(self, graph: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
        with warnings.catch_warnings():
            # torch marks TorchScript deprecated (FutureWarning); format=torchscript asks for it explicitly.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is", category=FutureWarning)
            traced = torch.jit.trace(graph, (example,), check_trace=False)
            atomic_write(path, lambda handle: torch.jit.save(traced, handle))
        return {"runtime": "torch.jit.load"}


@dataclass
class Exported:
    """What one export wrote: the model file and its input contract."""

    path: Path
    contract_path: Path
    contract: dict[str, Any]


def input_contract(trained: TrainedModel, file_format: ExportFormat, normalize_inside: bool, flip: bool,
                   l2_normalize: bool) -> dict[str, Any]:
    """How to feed the exported file and what it returns (written beside it as JSON)."""
    height, width = trained.height, trained.width
    if normalize_inside:
        values = "RGB pixels 0-255, resized to height x width; the graph normalises: (x / 255 - mean) / std"
    else:
        values = "RGB, resized to height x width, normalised: (pixel / 255 - mean) / std per channel"
    return {
        "format": file_format.name,
        "input": {"name": INPUT_NAME, "shape": [BATCH_AXIS, 3, height, width], "layout": "NCHW",
                  "dtype": "uint8" if normalize_inside else "float32", "values": values},
        "height": height,
        "width": width,
        "resize": "bilinear (PIL Image.resize) of the whole image to height x width, as reid.data.images does",
        "mean": list(trained.mean),
        "std": list(trained.std),
        "normalize_inside": normalize_inside,
        "output": {"name": OUTPUT_NAME, "shape": [BATCH_AXIS, int(trained.model.architecture["feature_dim"])],
                   "dtype": "float32", "l2_normalized": l2_normalize},
        "embedding_dim": int(trained.model.architecture["feature_dim"]),
        "l2_normalized": l2_normalize,
        "flip_tta": flip,
        # A camera embedding (SIE) needs each image's camera id, which the graph does not take: it is left out,
        # as for an image from an unknown camera (reid.inference.FeatureExtractor takes camids).
        "camera_embedding_applied": False,
        "source_model_has_camera_embedding": "num_cameras" in trained.model.architecture,
        "source_model": str(trained.path),
        "backbone": trained.model.architecture["backbone"],
        "head": trained.model.architecture["head"],
        "torch_version": torch.__version__,
    }


def export_model(trained: TrainedModel, file_format: ExportFormat, out_dir: str | Path, normalize_inside: bool = False,
                 flip: bool = False, l2_normalize: bool = True) -> Exported:
    """Write `trained` (on CPU) in `file_format` into `out_dir` as `<model file stem><suffix>`, and its input
    contract as `<that name>.json`."""
    trained.model.to("cpu").eval()
    if "num_cameras" in trained.model.architecture:
        log.warning("%s has a camera embedding (backbone.sie_coefficient); the exported graph takes images only, so "
                    "its embeddings leave it out, as for an image from an unknown camera", trained.path)
    graph = DeployedEmbedding(trained, normalize_inside, flip, l2_normalize).eval()
    shape = (TRACE_BATCH, 3, trained.height, trained.width)
    example = torch.zeros(shape, dtype=torch.uint8) if normalize_inside else torch.zeros(shape)
    path = Path(out_dir) / f"{trained.path.stem}{file_format.suffix}"
    try:
        with torch.no_grad():
            details = file_format.write(graph, example, path)
    except ReidError:
        raise
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0].rstrip(".")
        raise ExportError(
            f"exporting {trained.path} ({trained.model.architecture['backbone']}) to format={file_format.name} "
            f"failed: {type(exc).__name__}: {first_line}. The backbone may use an operation this format cannot "
            "express; try the other format (format=torchscript / format=onnx), or for ONNX another opset "
            "(format.opset=...)") from exc
    contract = {**input_contract(trained, file_format, normalize_inside, flip, l2_normalize), "file": path.name,
                **details}
    contract_path = path.with_name(path.name + ".json")
    atomic_write_text(contract_path, json.dumps(contract, indent=2) + "\n")
    return Exported(path, contract_path, contract)


def export(cfg: DictConfig) -> Exported:
    """The export the config describes (`reid.export`'s work, callable without the command line)."""
    if OmegaConf.is_missing(cfg, "model"):
        raise ConfigError(MISSING_MODEL)
    file_format = instantiate(cfg.format)
    trained = load_trained_model(cfg.model, "cpu")
    return export_model(trained, file_format, cfg.out_dir, normalize_inside=cfg.normalize_inside, flip=cfg.flip,
                        l2_normalize=cfg.l2_normalize)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@reports_user_errors(PROGRAM)
def main(cfg: DictConfig) -> None:
    result = export(cfg)
    contract = result.contract
    print(f"{PROGRAM}: wrote {result.path} (input {contract['input']['name']}: {contract['input']['dtype']} "
          f"{contract['input']['shape']}, output {contract['output']['name']}: float32 "
          f"{contract['output']['shape']}) and its input contract {result.contract_path}")


if __name__ == "__main__":
    main()
