"""What software a run used, for model_info.json."""

from __future__ import annotations

import platform
import sys
from importlib import metadata


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("reid", "torch", "torchvision", "timm", "open_clip_torch", "hydra-core", "omegaconf", "optuna",
                    "numpy", "pandas", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    import torch

    versions["cuda"] = torch.version.cuda or "none"
    versions["cuda_available"] = str(torch.cuda.is_available())
    return versions
