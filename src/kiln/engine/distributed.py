"""DistributedDataParallel on PyTorch's own engine (torchrun / c10d, ``env://``): process-group setup from
the environment torchrun sets, rank-0-only side effects, and the collectives kiln needs to keep ranks in
step (exact evaluation by gathering every sample once, shared stop decisions, per-rank RNG states)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


LOCAL = Dist()  # one process: no collectives


def launched() -> bool:
    """True under torchrun (or any launcher that sets the env:// variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device_kind: str) -> Dist:
    """Join the process group torchrun describes: nccl on CUDA, gloo on the CPU. The timeout
    (KILN_DDP_TIMEOUT_S, default 1800 s) bounds how long a rank waits for a dead peer before failing."""
    if not launched():
        return Dist()
    rank, world, local = (
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ.get("LOCAL_RANK", 0)),
    )
    if world > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("KILN_DDP_TIMEOUT_S", 1800)))
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    return Dist(rank, world, local)


def device_for(d: Dist, device: torch.device) -> torch.device:
    return torch.device("cuda", d.local_rank) if device.type == "cuda" and d.enabled else device


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def any_flag(d: Dist, flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any: ranks agree on stopping, so none waits forever."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_sum(d: Dist, values: torch.Tensor) -> torch.Tensor:
    if d.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


def gather_cat(d: Dist, t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over ranks (first dims may differ: each rank's shard of an eval split)."""
    if not d.enabled:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(d.world)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(d.world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def gather_objects(d: Dist, obj: Any) -> list[Any]:
    """One picklable object per rank (e.g. RNG states), on every rank."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(d: Dist, obj: Any) -> Any:
    """Rank 0's picklable ``obj``, on every rank."""
    if not d.enabled:
        return obj
    box = [obj if d.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(
    d: Dist, tensors: dict[str, torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    """Rank 0's named tensors (the other ranks pass anything: their dict is ignored), on every rank."""
    if not d.enabled:
        return tensors
    shapes = broadcast_object(
        d, {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()} if d.is_main else None
    )
    out = {}
    for name, (shape, dtype) in shapes.items():
        t = tensors[name].to(device) if d.is_main else torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(t, src=0)
        out[name] = t
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
