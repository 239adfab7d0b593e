"""The one seam of multi-process training: rank, world size, gathers, decisions made by rank 0.

`torchrun --nproc_per_node=N -m reid.train ...` starts N processes with RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/MASTER_PORT set; `init_from_env` joins them into one process group, whose CPU tensors travel over gloo
and CUDA tensors over NCCL. Without those variables (or with WORLD_SIZE=1) every function here is the identity, so
the training loop reads the same in both cases.

Semantics the rest of the code relies on:
- `data.p × data.k` is the global batch; each rank trains on its equal slice of it (see PKSampler).
- `all_gather` is differentiable: its backward sums the gradients every rank computes for each slice, so when
  every rank computes the same loss on the gathered batch, DDP's gradient average is exactly the gradient of that
  loss, as in one process.
- Decisions (the run directory, evaluation results, stopping) are taken on rank 0 and broadcast, so every rank
  stops at the same step with the same state; an error on rank 0 is raised on every rank.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from reid.errors import ConfigError

log = logging.getLogger("reid")

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes the run record, checkpoints and logs."""
    return rank() == 0


def launched_distributed() -> bool:
    """Whether this process was started by torchrun (or a compatible launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment; nothing for a single process.

    The backend maps CPU tensors to gloo and, where CUDA is available, CUDA tensors to NCCL, so the choice does not
    depend on `trainer.device` (composed later) and small decisions can always travel on the CPU.
    """
    if is_distributed() or not launched_distributed():
        return
    missing = [key for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start several "
                          "processes with `torchrun --nproc_per_node=N -m reid.train ...`")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    atexit.register(shutdown)
    if not is_main():
        # Only rank 0 reports progress; the others speak up for warnings and errors.
        logging.getLogger("reid").setLevel(logging.WARNING)


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def hydra_overrides() -> list[str]:
    """Extra Hydra overrides for this process: only rank 0 writes `.hydra/` into the shared run directory."""
    return [] if int(os.environ.get("RANK", "0")) == 0 else ["hydra.output_subdir=null"]


def place(device: torch.device) -> torch.device:
    """The device of this rank: `cuda` becomes `cuda:LOCAL_RANK` (made current) when several processes train."""
    if device.type != "cuda" or not is_distributed():
        return device
    local = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(local)
    return local


def broadcast_from_main(value: T) -> T:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(compute: Callable[[], T]) -> T:
    """Run `compute` on rank 0 only; every rank returns its result, or raises the error it raised."""
    if not is_distributed():
        return compute()
    outcome: tuple[bool, Any] = (True, None)
    if is_main():
        try:
            outcome = (True, compute())
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            outcome = (False, exc)
    ok, value = broadcast_from_main(outcome)
    if not ok:
        raise value
    return value


def first_signal(signum: int | None) -> int | None:
    """The stop signal any rank received (None if none did): all ranks stop after the same step."""
    if not is_distributed():
        return signum
    flag = torch.tensor([signum or 0], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's equally sized tensor along dim 0; the backward sums each slice's gradient over
    the ranks and hands every rank the gradient of its own slice."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (the same shape on each) concatenated in rank order, with gradients (see _AllGather)."""
    if not is_distributed():
        return tensor
    if tensor.requires_grad:
        return _AllGather.apply(tensor)
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on any device and backend.

    torch.nn.SyncBatchNorm refuses CPU tensors, so this one combines every rank's mean and variance (gathered with
    gradients) by the parallel-variance formula; it equals plain BatchNorm over the concatenated batch. In eval
    mode, or in a single process, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        count = input.numel() // input.shape[1]
        var, mean = torch.var_mean(input.float(), dim=dims, unbiased=False)
        stats = all_gather(torch.cat([mean, var, mean.new_tensor([count])])[None])
        channels = input.shape[1]
        means, variances, counts = stats[:, :channels], stats[:, channels:2 * channels], stats[:, -1:]
        total = counts.sum()
        global_mean = (counts * means).sum(0) / total
        global_var = (counts * (variances + (means - global_mean).pow(2))).sum(0) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = global_var * total / (total - 1).clamp(min=1)
                self.running_mean.lerp_(global_mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = [1, channels] + [1] * (input.dim() - 2)
        scale = torch.rsqrt(global_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        output = (input.float() - global_mean.view(shape)) * scale.view(shape)
        if self.bias is not None:
            output = output + self.bias.view(shape)
        return output.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer in `module` by a SyncBatchNorm sharing its parameters and buffers (in place;
    returns `module`, or its replacement if it is itself a BatchNorm layer)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        synced = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        synced.weight, synced.bias = module.weight, module.bias
        synced.running_mean, synced.running_var = module.running_mean, module.running_var
        synced.num_batches_tracked = module.num_batches_tracked
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module


def replicate(model: nn.Module) -> nn.Module:
    """The module the training step calls: DistributedDataParallel around `model` when several processes train.

    Build it again after changing which parameters train: DDP fixes that set when it is made, and expects each of
    them to get a gradient in every step (a loss that leaves one out, such as a triplet-only loss with its unused
    classifier, fails at the second step with DDP's own message). Not `static_graph`: with it, the gradients that
    flow through `all_gather`'s backward come out wrong (torch 2.14, gloo).
    """
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
