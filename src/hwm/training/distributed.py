"""Multi-process (DDP) helpers: one gradient all-reduce per optimizer step, and a check that every process
ends with the same weights.

An update takes three backward passes (world model, actor, critic) inside one ``training_step``; DDP's
reducer expects one backward per forward. Its reducer is switched off and each optimizer's gradients are
averaged here instead, in one flat all-reduce, just before clipping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.nn.parallel import DistributedDataParallel


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def disable_ddp_reducer(model: nn.Module | None) -> None:
    """Stops a DDP wrapper from all-reducing in backward (``average_gradients`` does it per optimizer)."""
    if isinstance(model, DistributedDataParallel):
        model.require_backward_grad_sync = False


def average_gradients(params: Iterable[Tensor]) -> None:
    """Replaces each parameter's gradient by its mean over all processes (one all-reduce per dtype)."""
    n = world_size()
    if n == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    for dtype in {g.dtype for g in grads}:
        same = [g for g in grads if g.dtype == dtype]
        flat = _flatten_dense_tensors(same)
        dist.all_reduce(flat)
        flat /= n
        for grad, synced in zip(same, _unflatten_dense_tensors(flat, same), strict=True):
            grad.copy_(synced)


def fingerprint(module: nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in state-dict order: equal iff the weights are bitwise equal."""
    digest = hashlib.sha256()
    for name, param in module.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gather_objects(own: Any) -> list[Any]:
    """Every process's ``own`` (picklable), in rank order."""
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, own)
    return out


def gather_fingerprints(module: nn.Module) -> list[str]:
    """Every process's parameter fingerprint (a list of one without DDP)."""
    own = fingerprint(module)
    if world_size() == 1:
        return [own]
    out: list[str] = [""] * world_size()
    dist.all_gather_object(out, own)
    return out
