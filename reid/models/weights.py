"""Loading a local weight file into a backbone, whatever wrapper the file's keys carry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from reid.checkpoint import extract_state_dict, safe_load
from reid.errors import CheckpointError

log = logging.getLogger(__name__)

# Prefixes that wrap a backbone's own keys in files saved by reid, DataParallel, open_clip or timm wrappers.
_PREFIXES = ("module.", "backbone.model.", "backbone.visual.", "backbone.", "visual.", "model.")


def _strip_to_module(state: dict[str, torch.Tensor], own_keys: set[str]) -> dict[str, torch.Tensor]:
    """Pick the key prefix under which the file's keys best match the module's own keys."""
    best: dict[str, torch.Tensor] = {k: v for k, v in state.items() if k in own_keys}
    for prefix in _PREFIXES:
        candidate = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        candidate = {k: v for k, v in candidate.items() if k in own_keys}
        if len(candidate) > len(best):
            best = candidate
    return best


def load_backbone_weights(
    module: nn.Module,
    path: str | Path,
    adapt: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> list[str]:
    """Load the backbone tensors of `path` into `module`; returns (and logs) the module keys left out.

    Keys the module lacks (a classifier, a text tower) are ignored; shape mismatches and a file with no
    matching key at all are errors that name the file.
    """
    state = extract_state_dict(safe_load(path), path)
    own = module.state_dict()
    matched = _strip_to_module(state, set(own))
    if adapt is not None:
        matched = adapt(matched)
    if not matched:
        raise CheckpointError(
            f"backbone.weights={path}: none of its {len(state)} keys match this backbone "
            f"(file keys look like {sorted(state)[:3]}, the backbone's like {sorted(own)[:3]})"
        )
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in matched.items() if v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(
            f"backbone.weights={path} is for another architecture: {len(wrong)} tensors differ in shape "
            f"(first: {wrong[0]})"
        )
    module.load_state_dict(matched, strict=False)
    left_out = sorted(set(own) - set(matched))
    log.info("loaded %d backbone tensors from %s; %d left at their initial values%s", len(matched), path,
             len(left_out), f" (e.g. {', '.join(left_out[:5])})" if left_out else "")
    return left_out
