"""`trainer.precision`: the number format of the training step and of feature extraction.

- `32`: float32 throughout.
- `16-mixed`: float16 autocast with a gradient scaler (CUDA only: CPU autocast has no float16 speed-up, and a
  scaler there would only hide it); asking for it on a CPU run is a ConfigError.
- `bf16-mixed`: bfloat16 autocast, no scaler (bfloat16 has float32's range), on CUDA and CPU.
- `auto` (default): `16-mixed` on CUDA, `32` on CPU, what reid did before the key existed.

`trainer.amp` is the older switch and stays an alias: `true` is `auto`, `false` is `32`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

from reid.errors import ConfigError

log = logging.getLogger("reid")

AUTO = "auto"
# Autocast dtype of every explicit precision (None: no autocast), and the devices each one runs on.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"32": None, "16-mixed": torch.float16,
                                                   "bf16-mixed": torch.bfloat16}
DEVICES = {"32": ("cpu", "cuda"), "16-mixed": ("cuda",), "bf16-mixed": ("cpu", "cuda")}
AUTO_BY_DEVICE = {"cuda": "16-mixed", "cpu": "32"}
CHOICES = (AUTO, *AUTOCAST_DTYPES)


@dataclass(frozen=True)
class Precision:
    """A resolved precision on one device type: what the step autocasts to and whether it scales gradients."""

    name: str
    device_type: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES[self.name]

    @property
    def scales_gradients(self) -> bool:
        """float16 underflows small gradients; the scaler multiplies the loss first and divides the gradients."""
        return self.autocast_dtype is torch.float16

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context the forward pass (and the loss) runs in."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.scales_gradients)


def effective_precision(precision: str, amp: bool | None) -> str:
    """`trainer.precision` with the `trainer.amp` alias folded in (still `auto` where the device decides)."""
    if amp is None:
        return str(precision)
    alias = AUTO if amp else "32"
    if str(precision) not in (AUTO, alias):
        raise ConfigError(f"trainer.amp={str(amp).lower()} and trainer.precision={precision} disagree: trainer.amp "
                          f"is the older alias of trainer.precision (true: auto, false: 32); set trainer.precision "
                          "alone")
    return alias


def resolve_precision(precision: str, amp: bool | None, device: torch.device) -> Precision:
    """The precision a run on `device` trains with; a name the device cannot run is a ConfigError."""
    name = effective_precision(precision, amp)
    if name not in CHOICES:
        raise ConfigError(f"trainer.precision={precision!r}: expected one of {', '.join(CHOICES)}")
    if amp is not None:
        log.warning("trainer.amp is an alias of trainer.precision (true: auto, false: 32); "
                    "trainer.amp=%s trains with trainer.precision=%s", str(amp).lower(), name)
    if name == AUTO:
        name = AUTO_BY_DEVICE[device.type]
    if device.type not in DEVICES[name]:
        raise ConfigError(f"trainer.precision={name} needs {' or '.join(DEVICES[name])}, but this run trains on "
                          f"{device.type}; on {device.type} use one of "
                          f"{', '.join(n for n, devices in DEVICES.items() if device.type in devices)}")
    return Precision(name, device.type)


def fold_amp_alias(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config with `trainer.amp` expressed as `trainer.precision`, so a checkpoint written with the
    alias (or before `trainer.precision` existed) compares equal to a config that says the same in the new key."""
    folded = dict(flat)
    amp = folded.pop("trainer.amp", None)
    folded["trainer.precision"] = effective_precision(folded.get("trainer.precision", AUTO), amp)
    return folded


__all__ = ["AUTO", "CHOICES", "Precision", "effective_precision", "fold_amp_alias", "resolve_precision"]
