"""The message a run that lost a rank ends with (the two-node kill in test_multinode.py shows it end to end)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from rl_lightning.distributed import lost_rank_message

GLOO = (
    "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:15796: Connection reset by peer"
)


def _trainer(global_rank: int, world_size: int, num_devices: int = 1, node_rank: int = 0) -> Any:
    return SimpleNamespace(global_rank=global_rank, world_size=world_size, num_devices=num_devices, node_rank=node_rank)


@pytest.mark.parametrize(("rank", "devices", "lost"), [(0, 1, "rank 1 of 2 (node 1)"), (1, 2, "rank 0 of 2 (node 0)")])
def test_two_ranks_name_the_other_and_how_to_resume(rank: int, devices: int, lost: str) -> None:
    message = lost_rank_message(_trainer(rank, 2, devices), RuntimeError(GLOO))
    assert message is not None and message.startswith(f"{lost} is gone")
    assert "Connection reset by peer" in message and "--ckpt_path last" in message


def test_more_ranks_name_this_one_and_point_to_the_other_logs() -> None:
    message = lost_rank_message(_trainer(3, 4, num_devices=2, node_rank=1), RuntimeError(GLOO))
    assert message is not None and "rank 3 of 4, node 1" in message and "other nodes' logs" in message


def test_other_errors_and_single_process_runs_get_no_message() -> None:
    assert lost_rank_message(_trainer(0, 2), RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert lost_rank_message(_trainer(0, 2), ValueError(GLOO)) is None
    assert lost_rank_message(_trainer(0, 1), RuntimeError(GLOO)) is None
