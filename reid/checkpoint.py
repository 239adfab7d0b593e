"""The one home of the on-disk formats: model files, the resumable training checkpoint, safe loading.

Every file is written atomically (temp file in the same directory, flushed, fsynced, renamed), so a kill
at any moment leaves the previous good file readable. Every load uses `torch.load(weights_only=True)`:
no pickled code ever runs. Model files hold only tensors and plain python values, so users can load
them the same way.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from reid.errors import CheckpointError

MODEL_FORMAT = "reid-model"
TRAINING_FORMAT = "reid-training-checkpoint"
FORMAT_VERSION = 1

BEST_MODEL = "best_model.pth"
FINAL_MODEL = "model_final.pth"
LAST_CHECKPOINT = "last_checkpoint.pth"


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through `write(fileobj)` to a temp file beside `path`, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text), mode="w")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


# torch.save writes a zip archive; files of torch < 1.6 are a pickle stream, which starts with the PROTO opcode.
_TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")


def _check_torch_file(path: Path) -> None:
    """Refuse a file that torch.save never wrote (text, an image, an empty file) before unpickling anything."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head.startswith(_TORCH_FILE_STARTS):
        raise CheckpointError(
            f"{path} is not a readable checkpoint: it is not a file written by torch.save (it starts with {head!r}, "
            "not a zip archive or a pickle stream); expected a .pth file such as a run's best_model.pth"
        )


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a `.pth` file with `weights_only=True`; refuse pickled code and explain corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    _check_torch_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or zipfile errors here
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled python objects, not only tensors "
                "(loading it could execute code). Re-save it as a plain state_dict of tensors."
            ) from exc
        if isinstance(exc, (zipfile.BadZipFile, EOFError)) or "zip archive" in text or "central directory" in text:
            raise CheckpointError(
                f"{path} is truncated or corrupt ({type(exc).__name__}: {text.splitlines()[0] if text else ''}). "
                "Use the previous checkpoint, e.g. best_model.pth or last_checkpoint.pth of the run."
            ) from exc
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {text.splitlines()[0] if text else ''}. "
            "The file may be truncated or corrupt; use the previous checkpoint."
        ) from exc


def model_file_payload(model: torch.nn.Module, architecture: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """What `best_model.pth` and `model_final.pth` hold: weights plus enough to rebuild and check the model."""
    return {
        "format": MODEL_FORMAT,
        "version": FORMAT_VERSION,
        "architecture": architecture,
        "meta": meta,
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }


def save_model_file(path: str | Path, model: torch.nn.Module, architecture: dict, meta: dict) -> None:
    atomic_torch_save(model_file_payload(model, architecture, meta), path)


def extract_state_dict(payload: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of any supported file: a reid model file, a training checkpoint, or a raw state dict."""
    if isinstance(payload, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in payload and isinstance(payload[key], dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(torch.is_tensor(v) for v in payload.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; expected a reid model file or a state_dict")
    return payload


def check_architecture(expected: dict[str, Any], found: dict[str, Any] | None, path: str | Path) -> None:
    """One clear error for a file made for another architecture or another number of classes."""
    if not found:
        return
    differing = [
        f"{key}: file has {found.get(key)!r}, this model has {expected.get(key)!r}"
        for key in sorted(set(expected) | set(found))
        if key in expected and key in found and expected[key] != found[key]
    ]
    if differing:
        raise CheckpointError(f"{path} was saved for a different model: " + "; ".join(differing))


def load_model_file(path: str | Path, model: torch.nn.Module, architecture: dict[str, Any]) -> dict[str, Any]:
    """Load a full model file into `model` after checking it matches; returns the file's metadata."""
    payload = safe_load(path)
    if isinstance(payload, dict) and payload.get("format") in (MODEL_FORMAT, TRAINING_FORMAT):
        check_architecture(architecture, payload.get("architecture"), path)
    state = extract_state_dict(payload, path)
    load_exact_state(model, state, path)
    return payload.get("meta", {}) if isinstance(payload, dict) else {}


def load_exact_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load `state` into `model`, refusing (naming the first offending key) any missing, extra or reshaped tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} tensors differ in shape (first: {mismatched[0]})")
        if missing:
            parts.append(f"{len(missing)} keys missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise CheckpointError(f"{path} does not fit this model: " + "; ".join(parts))
    model.load_state_dict(state)


def save_training_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """The resumable checkpoint; `state` is built by the trainer and holds only weights-only-safe values."""
    atomic_torch_save({"format": TRAINING_FORMAT, "version": FORMAT_VERSION, **state}, path)


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    payload = safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != TRAINING_FORMAT:
        raise CheckpointError(f"{path} is not a reid training checkpoint (expected format {TRAINING_FORMAT!r})")
    return payload


def load_initial_weights(path: str | Path, model: torch.nn.Module, architecture: dict[str, Any]) -> list[str]:
    """Start a model from another run's weights: same backbone required, a different classifier is left out.

    Returns (the caller logs) the model keys that kept their initial values.
    """
    payload = safe_load(path)
    found = payload.get("architecture") if isinstance(payload, dict) else None
    if found:
        same_backbone = {k: v for k, v in architecture.items() if k not in ("num_classes", "head")}
        check_architecture(same_backbone, {k: found.get(k) for k in same_backbone}, path)
    state = extract_state_dict(payload, path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if not usable:
        raise CheckpointError(f"{path}: none of its tensors fit this model (expected a reid model file)")
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))
