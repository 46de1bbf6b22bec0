"""State that differs between DDP ranks (each rank's replay buffer, RNG states), in the checkpoint that rank zero
writes: every rank's state is gathered into it (large tensors as references to files each rank wrote itself, see
:func:`rl_lightning.checkpoint.stage_tensors`), and each rank takes its own back on resume."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_warn

PER_RANK = "per_rank"


def gather_per_rank(trainer: pl.Trainer | None, state: Any) -> dict[str, list[Any]]:
    """``{"per_rank": [state of rank 0, state of rank 1, ...]}`` on rank zero (the rank that writes checkpoints).

    Must be called on every rank at once (Lightning builds checkpoints on all ranks). Other ranks get an empty
    list: what they return is not written.
    """
    if not gathers(trainer):
        return {PER_RANK: [state]}
    assert trainer is not None
    gathered: list[Any] | None = [None] * trainer.world_size if trainer.global_rank == 0 else None
    torch.distributed.gather_object(state, gathered, dst=0)
    return {PER_RANK: gathered or []}


def gathers(trainer: pl.Trainer | None) -> bool:
    """Whether :func:`gather_per_rank` collects the state of several ranks: under DDP, unless this rank saves a
    checkpoint alone while it handles an exception (Lightning's ``OnExceptionCheckpoint``): the other ranks are not
    saving with it, and gathering would wait for them forever, so its checkpoint holds this rank's state only."""
    if trainer is None or trainer.world_size == 1:
        return False
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return False
    return trainer.state.status != TrainerStatus.INTERRUPTED


def own_state(trainer: pl.Trainer | None, saved: dict[str, list[Any]], what: str) -> Any:
    """This rank's entry of a :func:`gather_per_rank` state.

    A run resumed with another number of ranks gives rank ``r`` the state of saved rank ``r mod n``, with a
    warning naming ``what``: with fewer ranks the states of the last saved ranks are left out; with more, some
    ranks start from the same state.
    """
    states = saved[PER_RANK]
    rank = 0 if trainer is None else trainer.global_rank
    world_size = 1 if trainer is None else trainer.world_size
    if len(states) != world_size:
        dropped = (
            f"the {what} of saved rank(s) {', '.join(map(str, range(world_size, len(states))))} go unused"
            if len(states) > world_size
            else f"ranks r and r + {len(states)} start from the same one"
        )
        rank_zero_warn(
            f"The checkpoint holds the {what} of {len(states)} rank(s), and this run has {world_size}: rank r "
            f"resumes with the {what} of saved rank r mod {len(states)}; {dropped}. Resume on {len(states)} "
            "rank(s) to give every rank its own back."
        )
    return states[rank % len(states)]


def seed_rank(rank: int) -> None:
    """Gives this rank random streams of its own: torch (CPU and CUDA), numpy and python are reseeded from a
    number drawn from torch's generator (the same on every rank after ``seed_everything``) and ``rank``.

    Lightning seeds every rank alike, which DDP needs for identical initial weights; after that, ranks that
    drew the same numbers would explore with the same noise, sample the same replay indices and shuffle alike.
    """
    base = int(torch.randint(0, 2**62, ()))
    seed = int(np.random.SeedSequence([base, rank]).generate_state(1)[0])
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and python random states, as plain tensors and data (they
    load with ``weights_only=True``)."""
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),  # uint32 tensors do not survive pickling
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
            "kind": str(kind),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():  # a resume may see fewer GPUs than the run that saved: restore those it has
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


_LOST_PEER_MARKERS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "Connection refused",
    "NCCL communicator was aborted",
    "remote process exited",
)
"""Parts of the messages with which gloo and NCCL collectives fail when another rank's process is gone."""


def lost_rank_message(trainer: pl.Trainer, exception: BaseException) -> str | None:
    """What to tell the user when ``exception`` is a collective that failed because another rank is gone (its
    process killed, its node down): which rank and node, what was kept and how to go on; ``None`` for any other
    exception, or outside a multi-process run.

    With two ranks the lost one is the other; with more, the collective's error does not say which (gloo names a
    peer's address, not its rank), so the message names this rank and asks to read the other nodes' logs.
    """
    if trainer.world_size < 2 or not isinstance(exception, RuntimeError):
        return None
    text = str(exception)
    if not isinstance(exception, torch.distributed.DistError) and not any(m in text for m in _LOST_PEER_MARKERS):
        return None
    per_node = max(trainer.num_devices, 1)
    rank, world_size = trainer.global_rank, trainer.world_size
    if world_size == 2:
        lost = 1 - rank
        who = f"rank {lost} of {world_size} (node {lost // per_node}) is gone"
    else:
        who = (
            f"a rank other than this one (rank {rank} of {world_size}, node {trainer.node_rank}) is gone or "
            "unreachable; the other nodes' logs name it"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(exception).__name__
    return (
        f"{who}: a collective failed on rank {rank} with {first_line!r}. The run ends on every rank; checkpoints "
        "already written are untouched. Restart every node and resume with --ckpt_path last (in Python: "
        "trainer.fit(..., ckpt_path='last'))."
    )
