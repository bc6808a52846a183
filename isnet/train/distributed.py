"""Data-parallel training through PyTorch's own engine (``torchrun`` + DistributedDataParallel).

``isnet train`` started by ``torchrun --nproc_per_node=N -m isnet train ...`` (or ``isnet train --nproc N``)
finds WORLD_SIZE/RANK/LOCAL_RANK in its environment and joins the process group (NCCL on GPUs, gloo on CPU).
Every rank trains on its own fixed shard of the training split (:func:`shard_records`: the partition
``DistributedSampler`` gives in epoch 0, seeded by ``train.seed``), decided before any data set is built, so
that each rank decodes and caches only its own images; the rank's loader reshuffles its shard every epoch
from the run seed and the epoch number (a resumed run sees the same order). Unlike a ``DistributedSampler``
the shards do not change between epochs: a cached image stays with the rank that cached it. Gradients are
averaged by DDP.

Forward through DDP when a method owns the forward. ISNet's forward is ``lrp_heatmaps(model, ...)``, which
walks the module structure of the plain model and calls its submodules itself; it cannot take the DDP
wrapper, and calling the plain model would bypass DDP's forward (where the reducer is prepared for the
backward and buffers are broadcast). So DDP wraps a :class:`StepForward`, a module that owns the plain model
and whose ``forward(fn, batch)`` runs ``fn(model, batch)``: the trainer passes the step's forward (the
plain ``model(x)`` or a method's own forward) through ``ddp(fn, batch)``, so DDP's pre/post-forward hooks run
around whatever the method computes, and the method still sees the plain model. The relevance backward
inside the LRP forward is an ``autograd.grad`` with respect to activations only (no parameter's gradient
accumulator fires), so the reducer sees each parameter's gradient exactly once, in the final backward of
the total loss, second-order terms included (tests/test_distributed.py checks DDP against one process).

Only rank 0 logs to MLflow, writes checkpoints, validates and tests (and builds validation data); validation metrics
are broadcast so early stopping agrees on every rank. Training metrics are summed over ranks (loss × n and correct
counts). With ``train.sync_bn`` BatchNorm layers become SyncBatchNorm (batch statistics over the global batch, also
inside the LRP forward: see :mod:`isnet.lrp.batchnorm`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def shard_records(records: list, world_size: int, rank: int, seed: int) -> list:
    """Rank ``rank``'s fixed share of ``records``: the indices ``DistributedSampler(shuffle=True, seed=seed,
    drop_last=False)`` gives that rank in epoch 0 (a seeded permutation, padded by repeating its first
    records so that every rank gets ceil(n / world_size) and runs the same number of steps)."""
    if world_size <= 1:
        return list(records)
    sampler = DistributedSampler(range(len(records)), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(0)
    return [records[i] for i in sampler]


class StepForward(nn.Module):
    """The module DDP wraps: ``forward(fn, batch)`` returns ``fn(model, batch)`` with the plain model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[nn.Module, dict], Any], batch: dict) -> Any:
        return fn(self.model, batch)


class SingleProcess:
    """The distributed interface of a run in one process: every collective is the identity, so the
    training loop calls the same methods whether or not it runs under torchrun."""

    world_size, rank = 1, 0
    is_main = True

    def forward(self, fn: Callable[[nn.Module, dict], Any], model: nn.Module, batch: dict) -> Any:
        return fn(model, batch)

    def shard(self, records: list, seed: int) -> list:
        return list(records)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def sum_dict(self, values: dict[str, float]) -> dict[str, float]:
        return values

    def mean_tensors(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return tensors

    def all_true(self, flag: bool) -> bool:
        return flag

    def sync_methods(self, methods) -> None:
        pass

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class DistContext:
    """One rank of a data-parallel run launched by torchrun (the same interface as :class:`SingleProcess`)."""

    world_size: int
    rank: int
    local_rank: int
    device: torch.device
    backend: str
    #: the DistributedDataParallel wrapper of the trainer's model (set by :func:`distribute_trainer`)
    ddp: nn.Module | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def forward(self, fn: Callable[[nn.Module, dict], Any], model: nn.Module, batch: dict) -> Any:
        """``fn(model, batch)`` through DDP's forward, so that gradients are averaged over ranks."""
        return self.ddp(fn, batch)

    def shard(self, records: list, seed: int) -> list:
        """This rank's training records (:func:`shard_records`)."""
        return shard_records(records, self.world_size, self.rank, seed)

    def sync_methods(self, methods) -> None:
        """Every rank's methods start from rank 0's state (e.g. a tuned ISNet band)."""
        states = self.broadcast_object({m.name: m.state_dict() for m in methods})
        for m in methods:
            m.load_state_dict(states[m.name])

    # -- collectives ---------------------------------------------------------------------------------
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def sum_dict(self, values: dict[str, float]) -> dict[str, float]:
        """Sum float values over ranks (every rank must pass the same keys)."""
        keys = sorted(values)
        keys_all = self.broadcast_object(keys)
        if keys_all != keys:
            raise RuntimeError(f"rank {self.rank}: metric keys {keys} differ from rank 0's {keys_all}")
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return dict(zip(keys, t.tolist()))

    def mean_tensors(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The mean of each tensor over ranks, as DDP averages gradients (one all-reduce of one flat buffer)."""
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def all_true(self, flag: bool) -> bool:
        t = torch.tensor([0 if flag else 1], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return int(t.item()) == 0

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_name: str) -> DistContext | None:
    """Join the process group torchrun set up (None when not launched with WORLD_SIZE > 1)."""
    if not launched_by_torchrun():
        return None
    world, rank, local = (int(os.environ[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name == "cuda" and not use_cuda:
        from isnet.errors import UserError

        raise UserError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if use_cuda:
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    return DistContext(world, rank, local, device, backend)


def distribute_trainer(trainer, ctx: DistContext) -> None:
    """Turn a Trainer built with ``dist=ctx`` (its data already this rank's shard) into one rank of a
    data-parallel run (in place): SyncBatchNorm when asked, and DDP around the model."""
    if trainer.dist is not ctx:
        raise ValueError("build the Trainer with dist=ctx, so that this rank builds (and caches) only its own "
                         "shard of the training data, then call distribute_trainer")
    cfg = trainer.cfg
    if cfg.train.sync_bn and ctx.device.type != "cuda":
        from isnet.errors import UserError

        raise UserError("train.sync_bn needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only); "
                        "set train.sync_bn=false for CPU runs")
    if cfg.train.sync_bn:
        # converts the BatchNorm children in place, keeping the same Parameter objects (the optimiser stays valid)
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(trainer.model)
        if converted is not trainer.model:
            raise ValueError("train.sync_bn: the model's root module is a BatchNorm layer")
    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    ctx.ddp = nn.parallel.DistributedDataParallel(StepForward(trainer.model), device_ids=device_ids,
                                                  find_unused_parameters=False)
