"""Replay buffers: the ring, uniform and prioritized sampling, n-step transitions, checkpoints, bad input."""

from __future__ import annotations

import copy
import doctest
import math
import pickle
import shutil
import sysconfig
from pathlib import Path
from typing import Any, Literal, cast

import lightning.pytorch as pl
import pytest
import torch
from tensordict import TensorDict

import rl_lightning.toy_envs  # noqa: F401  (registers PixelTarget-v0 and DictTarget-v0)
from rl_lightning import SAC, RLDataModule, keys, replay, sum_tree
from rl_lightning.checkpoint import RLCheckpointIO
from rl_lightning.collector import Collector
from rl_lightning.envs import make_vec_env
from rl_lightning.replay import INDEX, NEXT_DISCOUNT, STORED_KEYS, WEIGHT, ReplayBuffer, n_step_returns
from rl_lightning.sum_tree import SumTree
from tests.conftest import quiet_trainer

# The sum tree's two backends: the compiled C loops (rl_lightning._sumtree, built by `pip install` when a C
# compiler is present) and the torch fallback. Prioritized tests run on both.
BACKENDS = [
    "torch",
    pytest.param(
        "compiled", marks=pytest.mark.skipif(sum_tree._compiled is None, reason="rl_lightning._sumtree is not built")
    ),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sum-tree backend of the buffers a test builds; "torch" runs as an install without a C compiler does."""
    if request.param == "torch":
        monkeypatch.setattr(sum_tree, "_compiled", None)
    return cast(str, request.param)


def transitions(
    num_envs: int,
    steps: int,
    start: int = 0,
    terminated: tuple[tuple[int, int], ...] = (),
    truncated: tuple[tuple[int, int], ...] = (),
    reward: torch.Tensor | None = None,
) -> TensorDict:
    """A collector-shaped batch whose observations name their transition: env * 1000 + t (t from ``start``).

    The next observation is the observation + 0.5, the action the observation's negative, the reward (unless
    given) t. ``terminated`` / ``truncated`` list the (env, t - start) pairs where an episode ends.
    """
    t = torch.arange(start, start + steps, dtype=torch.float32)
    ident = (torch.arange(num_envs, dtype=torch.float32).unsqueeze(1) * 1000 + t).unsqueeze(-1)
    term = torch.zeros(num_envs, steps, 1, dtype=torch.bool)
    trunc = torch.zeros(num_envs, steps, 1, dtype=torch.bool)
    for env, step in terminated:
        term[env, step] = True
    for env, step in truncated:
        trunc[env, step] = True
    return TensorDict(
        {
            keys.OBSERVATION: ident.expand(num_envs, steps, 3).clone(),
            keys.ACTION: -ident,
            keys.ACTION_LOG_PROB: torch.zeros(num_envs, steps),
            keys.DONE: torch.zeros(num_envs, steps, 1, dtype=torch.bool),
            keys.NEXT: {
                keys.OBSERVATION: ident.expand(num_envs, steps, 3) + 0.5,
                keys.REWARD: t.expand(num_envs, steps).unsqueeze(-1).clone() if reward is None else reward,
                keys.TERMINATED: term,
                keys.TRUNCATED: trunc,
                keys.DONE: term | trunc,
                keys.EPISODE_RETURN: torch.zeros(num_envs, steps, 1),
            },
        },
        batch_size=[num_envs, steps],
    )


def contents(buffer: ReplayBuffer) -> TensorDict:
    """The stored transitions, in storage order."""
    size = len(buffer)
    return TensorDict(buffer._gather(torch.arange(size)), batch_size=[size])


def ids(td: TensorDict) -> list[int]:
    return td[keys.OBSERVATION][:, 0].long().tolist()


# --- the ring ---------------------------------------------------------------------------------------------------


def test_ring_wraps_around_and_overwrites_the_oldest() -> None:
    buffer = ReplayBuffer(capacity=10)
    assert len(buffer) == 0
    assert buffer.extend(transitions(1, 4)).tolist() == [0, 1, 2, 3]
    assert buffer.extend(transitions(1, 4, start=4)).tolist() == [4, 5, 6, 7]
    assert len(buffer) == 8
    assert buffer.extend(transitions(1, 4, start=8)).tolist() == [8, 9, 0, 1]
    assert len(buffer) == 10
    assert ids(contents(buffer)) == [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    # A batch larger than the buffer: only its last `capacity` transitions are kept.
    assert buffer.extend(transitions(1, 25, start=12)).tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert len(buffer) == 10
    assert ids(contents(buffer)) == [35, 36, 27, 28, 29, 30, 31, 32, 33, 34]


def test_extend_flattens_env_major_and_keeps_only_transition_keys() -> None:
    buffer = ReplayBuffer(capacity=100, gamma=0.9)
    batch = transitions(3, 5)
    index = buffer.extend(batch)
    stored = contents(buffer)
    assert index.tolist() == list(range(15))
    assert ids(stored) == ids(batch.reshape(-1))
    assert set(stored.keys(include_nested=True, leaves_only=True)) == set(STORED_KEYS)
    assert torch.equal(stored[keys.NEXT_REWARD], batch[keys.NEXT_REWARD].reshape(-1, 1))
    assert torch.equal(stored[NEXT_DISCOUNT], torch.full((15, 1), 0.9))
    # A flat batch is stored as it is.
    flat = transitions(2, 3, start=50).reshape(-1)
    assert buffer.extend(flat).tolist() == list(range(15, 21))
    assert ids(contents(buffer)[15:]) == ids(flat)


def test_sample_returns_the_stored_transitions_at_their_indices() -> None:
    buffer = ReplayBuffer(capacity=20)
    buffer.extend(transitions(2, 15))  # wraps
    stored = contents(buffer)
    sample = buffer.sample(16, generator=torch.Generator().manual_seed(0))
    assert sample.batch_size == (16,)
    assert sample[INDEX].dtype == torch.int64 and sample[INDEX].shape == (16,)
    assert WEIGHT not in sample.keys()
    assert (sample.exclude(INDEX) == stored[sample[INDEX]]).all()


def test_extend_under_inference_mode() -> None:
    """The collector makes inference tensors: a buffer first filled under inference mode still works outside."""
    buffer = ReplayBuffer(capacity=8, prioritized=True)
    with torch.inference_mode():
        buffer.extend(transitions(1, 4))
    buffer.extend(transitions(1, 4, start=4))
    sample = buffer.sample(4)
    buffer.update_priority(sample[INDEX], torch.ones(4))


# --- sampling ---------------------------------------------------------------------------------------------------


def chi_square(counts: torch.Tensor, probabilities: torch.Tensor) -> float:
    expected = probabilities * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


# 99.9% quantile of the chi-square distribution with 9 degrees of freedom.
CHI2_9_999 = 27.88


def test_uniform_sampling_frequencies() -> None:
    buffer = ReplayBuffer(capacity=10)
    buffer.extend(transitions(1, 10))
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([buffer.sample(10, generator=generator)[INDEX] for _ in range(5000)])
    counts = torch.bincount(draws, minlength=10).double()
    assert chi_square(counts, torch.full((10,), 0.1, dtype=torch.float64)) < CHI2_9_999


def test_prioritized_sampling_frequencies_follow_priority_to_the_alpha(backend: str) -> None:
    alpha = 0.7
    buffer = ReplayBuffer(capacity=10, prioritized=True, alpha=alpha, priority_eps=1e-6)
    assert buffer._tree is not None and buffer._tree.backend == backend
    buffer.extend(transitions(1, 10))
    priority = torch.arange(1.0, 11.0)
    buffer.update_priority(torch.arange(10), priority)
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([buffer.sample(10, generator=generator)[INDEX] for _ in range(5000)])
    counts = torch.bincount(draws, minlength=10).double()
    expected = (priority.double() + 1e-6) ** alpha
    assert chi_square(counts, expected / expected.sum()) < CHI2_9_999
    # Sanity: far from uniform.
    assert chi_square(counts, torch.full((10,), 0.1, dtype=torch.float64)) > 100


@pytest.mark.parametrize(
    ("capacity", "branching", "root_size"), [(1, 16, 8192), (37, 4, 2), (1000, 4, 8), (300, 16, 64)]
)
def test_sum_tree_matches_cumsum_and_searchsorted(capacity: int, branching: int, root_size: int, backend: str) -> None:
    generator = torch.Generator().manual_seed(capacity)
    tree = SumTree(capacity, branching=branching, root_size=root_size)
    assert tree.backend == backend
    # Integer priorities: every sum is exact in float32 and float64, so the comparison can be exact.
    priority = torch.zeros(capacity)
    written = capacity // 2 + 1
    priority[:written] = torch.randint(1, 20, (written,), generator=generator).float()
    tree.update(torch.arange(written), priority[:written])
    for _ in range(5):
        index = torch.randint(written, (min(written, 40),), generator=generator).unique()
        value = torch.randint(1, 20, (len(index),), generator=generator).float()
        priority[index] = value
        tree.update(index, value)
        assert tree.total == priority.sum().item()
        assert tree.min.item() == priority[:written].min().item()
        mass = torch.rand(500, generator=generator, dtype=torch.float64) * priority.sum()
        expected = torch.searchsorted(priority.double().cumsum(0), mass, right=True)
        leaf, value = tree.find(mass)
        assert torch.equal(leaf, expected) and torch.equal(value, priority[expected])
    rebuilt = SumTree(capacity, branching=branching, root_size=root_size)
    rebuilt.rebuild(tree.leaves(written))
    mass = torch.rand(500, generator=generator, dtype=torch.float64) * priority.sum()
    assert torch.equal(rebuilt.find(mass)[0], tree.find(mass)[0])
    assert rebuilt.total == tree.total and rebuilt.min.item() == tree.min.item()


def tree_tensors(tree: SumTree) -> list[torch.Tensor]:
    return [*tree._values, *tree._minima, tree._top_values, tree._top_minima, tree._root]


@pytest.mark.skipif(sum_tree._compiled is None, reason="rl_lightning._sumtree is not built")
@pytest.mark.parametrize(
    ("capacity", "branching", "root_size"), [(1, 16, 8192), (37, 4, 2), (1000, 4, 8), (5000, 3, 5), (70_000, 16, 8192)]
)
def test_sum_tree_backends_agree_bit_for_bit(capacity: int, branching: int, root_size: int) -> None:
    """Float priorities (sums round): both backends hold the same tree and find the same leaves, which are the
    leaves a brute-force cumsum + searchsorted over all leaves finds, up to the rounding of the sums."""
    generator = torch.Generator().manual_seed(capacity)
    compiled = SumTree(capacity, branching=branching, root_size=root_size, backend="compiled")
    fallback = SumTree(capacity, branching=branching, root_size=root_size, backend="torch")
    written = capacity // 2 + 1
    value = torch.rand(written, generator=generator) + 0.01
    for tree in (compiled, fallback):
        tree.update(torch.arange(written), value)
    for step in range(6):
        index = torch.randint(written, (min(written, 300),), generator=generator).unique()
        value = torch.rand(len(index), generator=generator) ** 3 + 1e-6
        if step % 2:
            order = torch.randperm(len(index), generator=generator)  # unsorted updates too
            index, value = index[order], value[order]
        increasing = bool((index[1:] > index[:-1]).all())
        reports = [tree.try_update(index, value, limit=written) for tree in (compiled, fallback)]
        expected = (increasing, increasing, int(index.min()), int(index.max()), float(value.max()))
        assert reports[0] == reports[1] == expected
        if not increasing:  # refused, untouched: applied as a plain update
            for tree in (compiled, fallback):
                tree.update(index, value)
        for a, b in zip(tree_tensors(compiled), tree_tensors(fallback), strict=True):
            assert torch.equal(a, b)
        leaves = compiled.leaves(written).double()
        running = leaves.cumsum(0)
        mass = torch.rand(1000, generator=generator, dtype=torch.float64) * compiled.total
        for query in (mass, mass.sort().values):
            leaf, found = compiled.find(query, limit=written)
            other_leaf, other_found = fallback.find(query, limit=written)
            assert torch.equal(leaf, other_leaf) and torch.equal(found, other_found)
            assert torch.equal(found, compiled.leaves(written)[leaf])
            # Brute force: the mass lies in the leaf's interval of the running sum, up to float rounding.
            tolerance = 1e-9 * compiled.total
            assert bool(((running - leaves)[leaf] <= query + tolerance).all())
            assert bool((query < running[leaf] + tolerance).all())
            exact = torch.searchsorted(running, query, right=True).clamp_(max=written - 1)
            assert int((leaf != exact).sum()) <= 2
        uniform = torch.rand(256, generator=generator, dtype=torch.float64)
        leaf, relative = compiled.sample(uniform, limit=written)
        other_leaf, other_relative = fallback.sample(uniform, limit=written)
        assert torch.equal(leaf, other_leaf) and torch.equal(relative, other_relative)
        assert bool((leaf[1:] >= leaf[:-1]).all())
        torch.testing.assert_close(relative, compiled.leaves(written)[leaf] / compiled.leaves(written).min())
    # Refused batches (NaN, out of range) change nothing, on both backends.
    before = [t.clone() for t in tree_tensors(compiled)]
    for leaf, value in (
        (torch.tensor([0, 1, 2]), torch.tensor([1.0, float("nan"), 2.0])),
        (torch.tensor([1, written]), torch.ones(2)),
    ):
        reports = [tree.try_update(leaf, value, limit=written) for tree in (compiled, fallback)]
        assert not reports[0][0] and not reports[1][0] and reports[0][1:4] == reports[1][1:4]
        assert math.isfinite(reports[0][4]) == math.isfinite(reports[1][4]) == (not bool(value.isnan().any()))
    for a, b, c in zip(tree_tensors(compiled), tree_tensors(fallback), before, strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)
    for tree in (compiled, fallback):
        tree.rebuild(compiled.leaves(written))
    for a, b in zip(tree_tensors(compiled), tree_tensors(fallback), strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(sum_tree._compiled is None, reason="rl_lightning._sumtree is not built")
def test_prioritized_buffer_samples_the_same_on_both_backends(tmp_path: Path) -> None:
    def make(backend: Literal["compiled", "torch"]) -> ReplayBuffer:
        buffer = ReplayBuffer(capacity=300, prioritized=True, alpha=0.6, beta=0.4, beta_steps=10)
        buffer._tree = SumTree(300, backend=backend)
        return buffer

    compiled, fallback = make("compiled"), make("torch")
    generator = torch.Generator().manual_seed(0)
    for start in range(0, 400, 50):  # wraps around
        batch = transitions(2, 25, start=start)
        for buffer in (compiled, fallback):
            buffer.extend(batch)
        td_error = torch.randn(32, 1, generator=generator)
        seed = int(torch.randint(1 << 30, (1,), generator=generator))
        samples = [buffer.sample(32, generator=torch.Generator().manual_seed(seed)) for buffer in (compiled, fallback)]
        assert (samples[0] == samples[1]).all()
        for buffer, sample in zip((compiled, fallback), samples, strict=True):
            buffer.update_priority(sample[INDEX], td_error)
    assert compiled._tree is not None and fallback._tree is not None
    for a, b in zip(tree_tensors(compiled._tree), tree_tensors(fallback._tree), strict=True):
        assert torch.equal(a, b)
    # A checkpoint of one backend resumes on the other.
    torch.save(compiled.state_dict(), tmp_path / "buffer.pt")
    resumed = make("torch")
    resumed.load_state_dict(torch.load(tmp_path / "buffer.pt", weights_only=True))
    a = compiled.sample(64, generator=torch.Generator().manual_seed(1))
    b = resumed.sample(64, generator=torch.Generator().manual_seed(1))
    assert (a == b).all()


def test_compiled_sum_tree_is_built_where_a_compiler_is() -> None:
    """`pip install` builds rl_lightning._sumtree when it finds a C compiler: it must not go missing silently."""
    compiler = str(sysconfig.get_config_var("CC") or "cc").split()[0]
    if not any(shutil.which(name) for name in (compiler, "gcc", "cc")):
        pytest.skip("no C compiler: the torch sum tree is the one in use")
    assert sum_tree._compiled is not None, (
        f"A C compiler is present but rl_lightning._sumtree does not import ({sum_tree._COMPILED_ERROR}). "
        "Reinstall with `pip install -e .` (or `bash scripts/setup.sh`) and read the build output."
    )
    assert SumTree(10).backend == "compiled"
    assert ReplayBuffer(capacity=10, prioritized=True)._tree is not None


def test_compiled_backend_that_did_not_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sum_tree, "_compiled", None)
    assert SumTree(10).backend == "torch"
    with pytest.raises(ValueError, match=r"backend='compiled' is unavailable.*use backend='torch'"):
        SumTree(10, backend="compiled")


def test_copies_of_a_sum_tree_are_independent(backend: str) -> None:
    """The compiled loops write through data pointers: a copy must write its own tensors, never the original's."""
    tree = SumTree(100, branching=4, root_size=8)
    tree.update(torch.arange(50), torch.ones(50))
    for copied in (copy.deepcopy(tree), pickle.loads(pickle.dumps(tree))):
        copied.update(torch.tensor([3, 60]), torch.tensor([5.0, 2.0]))
        assert tree.total == 50.0 and tree.leaves(61)[[3, 60]].tolist() == [1.0, 0.0]
        assert copied.total == 56.0 and copied.leaves(61)[[3, 60]].tolist() == [5.0, 2.0]
        assert torch.equal(copied.find(torch.tensor([4.0, 55.5], dtype=torch.float64))[0], torch.tensor([3, 60]))


def test_update_priority_with_duplicate_indices_keeps_the_last(backend: str) -> None:
    buffer = ReplayBuffer(capacity=40, prioritized=True, alpha=1.0, priority_eps=0.5)
    buffer.extend(transitions(2, 20))
    index = torch.tensor([3, 5, 3, 7, 5, 3])
    buffer.update_priority(index, torch.tensor([1.0, 2.0, 7.0, -4.0, 2.5, 9.0]))
    assert buffer._tree is not None
    leaves = buffer._tree.leaves(40)
    expected = torch.ones(40)  # the max priority new transitions got
    expected[3], expected[5], expected[7] = 9.5, 3.0, 4.5
    assert torch.equal(leaves, expected)
    assert buffer._tree.total == pytest.approx(expected.sum().item())
    # Sorted, as a prioritized sample's indices come, with a repeat.
    buffer.update_priority(torch.tensor([10, 11, 11, 12]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    expected[10], expected[11], expected[12] = 1.5, 3.5, 4.5
    assert torch.equal(buffer._tree.leaves(40), expected)
    generator = torch.Generator().manual_seed(1)
    mass = torch.rand(1000, generator=generator, dtype=torch.float64) * expected.sum()
    assert torch.equal(buffer._tree.find(mass)[0], torch.searchsorted(expected.double().cumsum(0), mass, right=True))


def test_new_transitions_get_the_max_priority(backend: str) -> None:
    buffer = ReplayBuffer(capacity=8, prioritized=True, alpha=1.0, priority_eps=1e-6)
    buffer.extend(transitions(1, 4))
    buffer.update_priority(torch.tensor([0, 1]), torch.tensor([5.0, 0.5]))
    buffer.extend(transitions(1, 2, start=4))
    assert buffer._tree is not None
    assert buffer._tree.leaves(6).tolist() == pytest.approx([5.0, 0.5, 1.0, 1.0, 5.0, 5.0], rel=1e-5)


def test_importance_weights_and_beta_annealing(backend: str) -> None:
    buffer = ReplayBuffer(capacity=6, prioritized=True, alpha=0.5, beta=0.4, beta_final=1.0, beta_steps=4)
    buffer.extend(transitions(1, 6))
    priority = torch.tensor([0.1, 1.0, 2.0, 4.0, 8.0, 0.5], dtype=torch.float64)
    buffer.update_priority(torch.arange(6), priority)
    p = (priority + buffer.priority_eps) ** 0.5
    probability = p / p.sum()
    generator = torch.Generator().manual_seed(0)
    betas = []
    for _ in range(6):
        beta = buffer.current_beta
        betas.append(beta)
        sample = buffer.sample(6, generator=generator)
        # Schaul et al. 2016: w_i = (N P(i))^-beta / max_j (N P(j))^-beta, max over the whole buffer.
        every = (6 * probability) ** -beta
        expected = every[sample[INDEX]] / every.max()
        assert sample[WEIGHT].dtype == torch.float32 and sample[WEIGHT].shape == (6, 1)
        torch.testing.assert_close(sample[WEIGHT].squeeze(1), expected.float())
    assert betas == pytest.approx([0.4, 0.55, 0.7, 0.85, 1.0, 1.0])


def test_update_priority_is_a_no_op_when_uniform() -> None:
    buffer = ReplayBuffer(capacity=4)
    buffer.extend(transitions(1, 4))
    buffer.update_priority(torch.tensor([0, 99]), torch.tensor([float("nan")]))


# --- n-step -----------------------------------------------------------------------------------------------------


def test_n_step_returns_pure_function() -> None:
    reward = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    done = torch.tensor([[False, True, False, False]])
    returns, steps, complete = n_step_returns(reward, done, n_step=3, gamma=0.5)
    assert returns.tolist() == [[2.0, 2.0, 8.0, 8.0]]  # 1 + 0.5 * 2 | 2 | 4 + 0.5 * 8 | 8
    assert steps.tolist() == [[2, 1, 2, 1]]
    assert complete.tolist() == [[True, True, False, False]]


def test_n_step_transitions_across_episode_ends_and_extend_calls() -> None:
    """Hand-computed 3-step transitions, gamma = 0.5, over two batches of [2 envs, 4 steps].

    env 0: rewards 1 2 4 8 | 16 32 64 128, terminated at t = 1, truncated at t = 6.
    env 1: rewards 1 1 1 1 | 1 1 1 1, no episode end.
    """
    buffer = ReplayBuffer(capacity=100, n_step=3, gamma=0.5)
    reward1 = torch.tensor([[1.0, 2.0, 4.0, 8.0], [1.0, 1.0, 1.0, 1.0]]).unsqueeze(-1)
    reward2 = torch.tensor([[16.0, 32.0, 64.0, 128.0], [1.0, 1.0, 1.0, 1.0]]).unsqueeze(-1)
    first = buffer.extend(transitions(2, 4, terminated=((0, 1),), reward=reward1))
    # Complete after batch 1: env 0 t=0 (ends at the termination), t=1; env 1 t=0, t=1. The rest is held back.
    assert first.tolist() == [0, 1, 2, 3]
    second = buffer.extend(transitions(2, 4, start=4, truncated=((0, 2),), reward=reward2))
    # Batch 2 completes env 0 t=2..6 (t=7 held back) and env 1 t=2..5 (t=6, 7 held back).
    assert second.tolist() == list(range(4, 13))
    stored = contents(buffer)

    # (env, t) -> (reward, rewards used, last step of the window)
    expected = [
        ((0, 0), 1 + 0.5 * 2, 2, 1),
        ((0, 1), 2, 1, 1),
        ((1, 0), 1 + 0.5 + 0.25, 3, 2),
        ((1, 1), 1.75, 3, 3),
        ((0, 2), 4 + 0.5 * 8 + 0.25 * 16, 3, 4),
        ((0, 3), 8 + 0.5 * 16 + 0.25 * 32, 3, 5),
        ((0, 4), 16 + 0.5 * 32 + 0.25 * 64, 3, 6),  # the truncation is the window's last step
        ((0, 5), 32 + 0.5 * 64, 2, 6),
        ((0, 6), 64, 1, 6),
        ((1, 2), 1.75, 3, 4),
        ((1, 3), 1.75, 3, 5),
        ((1, 4), 1.75, 3, 6),
        ((1, 5), 1.75, 3, 7),
    ]
    assert ids(stored) == [env * 1000 + t for (env, t), *_ in expected]
    for i, ((env, _), reward, used, last) in enumerate(expected):
        assert stored[keys.NEXT_REWARD][i].item() == reward, i
        assert stored[NEXT_DISCOUNT][i].item() == 0.5**used, i
        assert stored[keys.NEXT_OBSERVATION][i, 0].item() == env * 1000 + last + 0.5, i
        assert stored[keys.ACTION][i].item() == -stored[keys.OBSERVATION][i, 0].item()
        assert stored[keys.NEXT_TERMINATED][i].item() == ((env, last) == (0, 1)), i
        assert stored[keys.NEXT_TRUNCATED][i].item() == ((env, last) == (0, 6)), i
        assert stored[keys.NEXT_DONE][i].item() == ((env, last) in [(0, 1), (0, 6)]), i


def test_n_step_carry_survives_a_checkpoint_and_short_batches() -> None:
    """Batches shorter than n_step - 1, and a state_dict round trip between them, give the same transitions."""
    whole = ReplayBuffer(capacity=100, n_step=4, gamma=0.9)
    whole.extend(transitions(2, 12, terminated=((1, 5),)))
    pieces = ReplayBuffer(capacity=100, n_step=4, gamma=0.9)
    batch = transitions(2, 12, terminated=((1, 5),))
    pieces.extend(batch[:, :2])
    pieces.extend(batch[:, 2:3])
    restored = ReplayBuffer(capacity=100, n_step=4, gamma=0.9)
    restored.load_state_dict(pieces.state_dict())
    restored.extend(batch[:, 3:12])
    assert len(restored) == len(whole)
    a, b = contents(whole), contents(restored)
    order_a, order_b = a[keys.OBSERVATION][:, 0].argsort(), b[keys.OBSERVATION][:, 0].argsort()
    assert (a[order_a] == b[order_b]).all()


def reset_at_start(batch: TensorDict, envs: list[int]) -> TensorDict:
    """``batch`` with ``is_init`` marking its first step as a new episode for ``envs`` (the collector after a reset)."""
    is_init = torch.zeros(*batch.batch_size, 1, dtype=torch.bool)
    is_init[envs, 0] = True
    batch.set(keys.IS_INIT, is_init)
    return batch


def test_n_step_windows_end_as_truncated_when_the_envs_are_reset() -> None:
    """3-step windows, gamma = 0.5: env 0's held-back windows (t = 2, 3) end at its reset, bootstrapping from their
    own next observation; env 1 goes on across the batches as before. Nothing joins the two episodes of env 0."""
    buffer = ReplayBuffer(capacity=100, n_step=3, gamma=0.5)
    reward = torch.tensor([[1.0, 2.0, 4.0, 8.0], [1.0, 1.0, 1.0, 1.0]]).unsqueeze(-1)
    buffer.extend(reset_at_start(transitions(2, 4, reward=reward), [0, 1]))
    assert ids(contents(buffer)) == [0, 1, 1000, 1001]
    buffer.extend(reset_at_start(transitions(2, 4, start=100), [0]))  # env 0 reset: a new episode from t = 100
    stored = contents(buffer)
    by_id = {int(i): k for k, i in enumerate(ids(stored))}
    for ident, reward_sum, used in [(2, 4 + 0.5 * 8, 2), (3, 8.0, 1)]:
        k = by_id[ident]
        assert stored[keys.NEXT_REWARD][k].item() == reward_sum
        assert stored[NEXT_DISCOUNT][k].item() == 0.5**used
        assert stored[keys.NEXT_OBSERVATION][k, 0].item() == 3.5  # t = 3's own next observation
        assert stored[keys.NEXT_TRUNCATED][k].item() and stored[keys.NEXT_DONE][k].item()
        assert not stored[keys.NEXT_TERMINATED][k].item()
    # env 1 was not reset: its windows run on into the second batch (t = 2 ends at t = 100 + 0, its 3rd step).
    assert stored[keys.NEXT_OBSERVATION][by_id[1002], 0].item() == 1100.5
    # Every stored window of env 0 lies in one of its episodes (t < 100, or t >= 100).
    for obs, nxt in zip(ids(stored), stored[keys.NEXT_OBSERVATION][:, 0].floor().long().tolist(), strict=True):
        if obs < 1000:
            assert (obs >= 100) == (nxt >= 100), (obs, nxt)


def test_n_step_windows_close_when_all_envs_are_reset_into_another_number_of_envs() -> None:
    buffer = ReplayBuffer(capacity=100, n_step=3, gamma=0.5)
    buffer.extend(reset_at_start(transitions(2, 4), [0, 1]))
    buffer.extend(reset_at_start(transitions(3, 4, start=100), [0, 1, 2]))
    stored = contents(buffer)
    # Batch 1's held-back t = 2, 3 of both envs were stored, ending at t = 3; batch 2 holds back its own last two.
    assert sorted(ids(stored)) == sorted([0, 1, 2, 3, 1000, 1001, 1002, 1003, 100, 101, 1100, 1101, 2100, 2101])
    with pytest.raises(ValueError, match=r"The batch has 2 envs, but the transitions held back .* come from 3"):
        buffer.extend(reset_at_start(transitions(2, 4, start=200), [0]))  # not a reset of every env


# --- checkpoints ------------------------------------------------------------------------------------------------


def test_memory_state_dict_round_trips_through_torch_save(tmp_path: Path, backend: str) -> None:
    def make() -> ReplayBuffer:
        return ReplayBuffer(capacity=50, prioritized=True, n_step=2, gamma=0.9)

    buffer = make()
    buffer.extend(transitions(2, 10, terminated=((0, 4),)))
    buffer.update_priority(torch.tensor([0, 3]), torch.tensor([3.0, 0.2]))
    buffer.sample(4)
    state = buffer.state_dict()
    assert state["data"]["observation"].shape[0] == len(buffer)  # only the filled part is saved
    torch.save(state, tmp_path / "buffer.pt")
    restored = make()
    restored.load_state_dict(torch.load(tmp_path / "buffer.pt", weights_only=True))
    assert len(restored) == len(buffer)
    assert restored.current_beta == buffer.current_beta
    for replica in (buffer, restored):  # both continue the same way, wrapping around
        assert replica.extend(transitions(2, 30, start=10)).tolist()[:2] == [18, 19]
    assert (contents(restored) == contents(buffer)).all()
    a = buffer.sample(16, generator=torch.Generator().manual_seed(3))
    b = restored.sample(16, generator=torch.Generator().manual_seed(3))
    assert (a == b).all()


def test_memmap_storage_round_trip(tmp_path: Path) -> None:
    scratch = tmp_path / "replay"
    buffer = ReplayBuffer(capacity=50, storage="memmap", scratch_dir=str(scratch), prioritized=True)
    for start in (0, 32, 64):  # 96 transitions: wraps around
        buffer.extend(transitions(2, 16, start=start))
    assert len(buffer) == 50
    files = sorted(str(path.relative_to(scratch)) for path in scratch.rglob("*.memmap"))
    assert files == [
        "transitions/action.memmap",
        "transitions/next.discount.memmap",
        "transitions/next.done.memmap",
        "transitions/next.observation.memmap",
        "transitions/next.reward.memmap",
        "transitions/next.terminated.memmap",
        "transitions/next.truncated.memmap",
        "transitions/observation.memmap",
    ]
    state = buffer.state_dict()
    assert state["data"]["observation"].data_ptr() == buffer._data[keys.OBSERVATION].data_ptr()  # a view, no copy
    io = RLCheckpointIO(external_bytes=256)  # rl_lightning's checkpoint IO: the contents go beside the file
    io.save_checkpoint({"buffer": state}, tmp_path / "buffer.ckpt")
    saved_contents = contents(buffer).clone()
    buffer.extend(transitions(2, 16, start=500))  # written after the checkpoint: not in its snapshot

    restored = ReplayBuffer(capacity=50, storage="memmap", scratch_dir=str(tmp_path / "elsewhere"), prioritized=True)
    restored.load_state_dict(io.load_checkpoint(tmp_path / "buffer.ckpt")["buffer"])
    assert restored.scratch_dir == str(tmp_path / "elsewhere")  # its own files, filled from the snapshot
    assert len(restored) == 50
    assert (contents(restored) == saved_contents).all()
    assert not (contents(restored) == contents(buffer)).all()
    reference = ReplayBuffer(capacity=50, storage="memmap", scratch_dir=str(tmp_path / "ref"), prioritized=True)
    for start in (0, 32, 64):
        reference.extend(transitions(2, 16, start=start))
    a = reference.sample(16, generator=torch.Generator().manual_seed(0))
    b = restored.sample(16, generator=torch.Generator().manual_seed(0))
    assert (a == b).all()
    assert reference.extend(transitions(1, 4, start=200)).tolist() == restored.extend(transitions(1, 4)).tolist()


def test_memmap_buffer_reloads_its_own_state_and_replaces_old_files(tmp_path: Path) -> None:
    """A state whose contents are views of this buffer's own files loads back into it, and a new buffer in a directory
    that holds another buffer's files replaces them (shared observations and per-transition ones alike)."""
    for envs in (EpisodeEnvs(2), None):
        buffer = ReplayBuffer(capacity=30, storage="memmap", scratch_dir=str(tmp_path), n_step=2)
        for start in range(0, 20, 4):
            buffer.extend(transitions(2, 4, start=start) if envs is None else envs.batch(4))
        saved = contents(buffer).clone()
        buffer.load_state_dict(buffer.state_dict())
        assert (contents(buffer) == saved).all()
        again = ReplayBuffer(capacity=30, storage="memmap", scratch_dir=str(tmp_path), n_step=2)
        again.extend(EpisodeEnvs(2, lengths=50).batch(4))
        assert len(again) == 6 and (contents(buffer) == saved).all()  # 2 envs x 3 complete 2-step windows


def test_empty_buffer_state_round_trips(tmp_path: Path) -> None:
    for storage in ("memory", "memmap"):
        buffer = ReplayBuffer(capacity=5, storage=storage, scratch_dir=str(tmp_path))
        restored = ReplayBuffer(capacity=5, storage=storage, scratch_dir=str(tmp_path))
        restored.load_state_dict(buffer.state_dict())
        assert len(restored) == 0
        restored.extend(transitions(1, 3))
        assert len(restored) == 3


# --- real collector batches -------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_collector_batches(env_id: str) -> None:
    envs = make_vec_env(env_id, num_envs=4, seed=0)
    discrete = env_id == "CartPole-v1"

    def policy(obs: torch.Tensor) -> dict[str, torch.Tensor]:
        if discrete:
            return {keys.ACTION: torch.zeros(len(obs), dtype=torch.int64)}  # CartPole falls in ~10 steps
        return {keys.ACTION: torch.ones(len(obs), 1), keys.ACTION_LOG_PROB: torch.zeros(len(obs))}

    collector = Collector(envs, policy, steps_per_batch=32)
    collector.reset(seed=0)
    batches = [collector.collect() for _ in range(2)]
    envs.close()

    one_step = ReplayBuffer(capacity=200)
    for batch in batches:
        one_step.extend(batch)
    assert len(one_step) == 200  # 256 transitions, wrapped
    stored = contents(one_step)
    flat = cast(TensorDict, torch.cat([batch.reshape(-1) for batch in batches]))[-200:]
    order = torch.cat([torch.arange(56, 200), torch.arange(56)])  # storage index of each of the last 200
    for key in replay.TRANSITION_KEYS:
        assert torch.equal(stored.get(key)[order], flat.get(key)), key

    n_step = ReplayBuffer(capacity=1000, n_step=3, gamma=0.9, prioritized=True)
    for batch in batches:
        n_step.extend(batch)
    assert 256 - 4 * 2 <= len(n_step) < 256  # at most n_step - 1 transitions per env held back
    sample = n_step.sample(64, generator=torch.Generator().manual_seed(0))
    assert sample[keys.OBSERVATION].shape == (64, *batches[0][keys.OBSERVATION].shape[2:])
    assert sample[keys.ACTION].dtype == batches[0][keys.ACTION].dtype
    discount = sample[NEXT_DISCOUNT].squeeze(1)
    for d, done in zip(discount.tolist(), sample[keys.NEXT_DONE].squeeze(1).tolist(), strict=True):
        assert any(math.isclose(d, 0.9**m, rel_tol=1e-6) for m in (1, 2, 3))
        assert done or math.isclose(d, 0.9**3, rel_tol=1e-6)  # windows shorter than 3 end an episode
    if discrete:
        assert sample[keys.NEXT_TERMINATED].any()
    n_step.update_priority(sample[INDEX], torch.rand(64))


@pytest.mark.parametrize("env_id", ["PixelTarget-v0", "DictTarget-v0"])
def test_collector_batches_of_images_and_dict_observations(env_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real collector batches of rl_lightning's toy envs (36x36x1 uint8 images: stored once, in the pool; a nested
    Dict observation with a Discrete leaf: stored per leaf): the buffer holds the batches' own transitions, and with
    3-step windows and priorities it samples exactly what the naive layout samples."""
    envs = make_vec_env(env_id, num_envs=3, seed=0)
    collector = Collector(envs, lambda obs: {keys.ACTION: torch.randint(4, (3,))}, steps_per_batch=6)
    collector.reset(seed=0)
    batches = [collector.collect() for _ in range(6)]  # episodes of 8 steps
    envs.close()

    one_step = ReplayBuffer(capacity=40)
    with monkeypatch.context() as patch:
        naive(patch)
        reference = ReplayBuffer(capacity=60, n_step=3, prioritized=True)
    n_step = ReplayBuffer(capacity=60, n_step=3, prioritized=True)
    for batch in batches:
        one_step.extend(batch)
        assert torch.equal(n_step.extend(batch), reference.extend(batch))
    assert one_step._shared == n_step._shared == (env_id == "PixelTarget-v0") and not reference._shared
    flat = cast(TensorDict, torch.cat([batch.reshape(-1) for batch in batches]))[-40:]
    order = torch.cat([torch.arange(28, 40), torch.arange(28)])  # storage index of each of the last 40
    stored = contents(one_step)
    for key in (keys.OBSERVATION, keys.NEXT_OBSERVATION, keys.ACTION, keys.NEXT_REWARD, keys.NEXT_TRUNCATED):
        assert (stored.get(key)[order] == flat.get(key)).all(), key
    if one_step._shared:
        check_pool(one_step)
        assert int((one_step._pool_refs > 0).sum()) <= 40 + 40 // 8 + 3  # one per transition, episode ends, tail
    for seed in range(3):
        a = reference.sample(32, generator=torch.Generator().manual_seed(seed))
        b = n_step.sample(32, generator=torch.Generator().manual_seed(seed))
        assert (a == b).all()


def test_frame_stacks_of_a_real_env_are_stored_as_single_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """PixelTarget-v0 under gymnasium's FrameStackObservation (stacks [4, 36, 36, 1], episodes of 8 steps, same-step
    autoreset): the buffer finds the stacks, stores about one frame per transition, and samples exactly the stacks
    the naive layout stores, final observations and the reset padding included."""
    stack = {"class_path": "gymnasium.wrappers.FrameStackObservation", "init_args": {"stack_size": 4}}
    envs = make_vec_env("PixelTarget-v0", num_envs=3, seed=0, wrappers=[stack])
    collector = Collector(envs, lambda obs: {keys.ACTION: torch.randint(4, (3,))}, steps_per_batch=6)
    collector.reset(seed=0)
    batches = [collector.collect() for _ in range(8)]
    envs.close()
    assert batches[0][keys.OBSERVATION].shape[2:] == (4, 36, 36, 1)

    frames = ReplayBuffer(capacity=100, n_step=3, prioritized=True)
    with monkeypatch.context() as patch:
        naive(patch)
        reference = ReplayBuffer(capacity=100, n_step=3, prioritized=True)
    for batch in batches:
        assert torch.equal(frames.extend(batch), reference.extend(batch))
    assert frames._stack_axis == 0 and frames._pool[()].shape[1:] == (36, 36, 1)
    check_pool(frames)
    live = int((frames._pool_refs > 0).sum())
    assert live <= len(frames) + 4 * (144 // 8) + 3 * 2 * 3, live  # a frame a step, 4 an episode, held windows
    for seed in range(3):
        a = reference.sample(32, generator=torch.Generator().manual_seed(seed))
        b = frames.sample(32, generator=torch.Generator().manual_seed(seed))
        assert (a == b).all() and b[keys.OBSERVATION].is_contiguous()


# --- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"capacity": 0}, r"capacity=0 is invalid: expected an integer >= 1"),
        ({"capacity": 2.5}, r"capacity=2.5 is invalid"),
        ({"storage": "disk"}, r"storage='disk' is invalid: expected 'memory' or 'memmap'"),
        ({"storage": "memmap"}, r"storage='memmap' needs scratch_dir.*or use storage='memory'"),
        ({"alpha": -0.1}, r"alpha=-0.1 is invalid: expected a value >= 0"),
        ({"beta": 1.5}, r"beta=1.5 is invalid: expected a value in \[0.0, 1.0\]"),
        ({"beta_final": -0.5}, r"beta_final=-0.5 is invalid"),
        ({"beta_steps": 0}, r"beta_steps=0 is invalid"),
        ({"priority_eps": 0.0}, r"priority_eps=0.0 is invalid: expected a value > 0"),
        ({"prioritized": True, "priority_eps": 1e-10, "alpha": 5.0}, r"underflow float32.*at most 3.79"),
        ({"n_step": 0}, r"n_step=0 is invalid: expected an integer >= 1"),
        ({"gamma": 1.5}, r"gamma=1.5 is invalid: expected a value in \[0.0, 1.0\]"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReplayBuffer(**{"capacity": 10, **kwargs})


def test_unwritable_scratch_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=r"scratch_dir=.*a_file/replay' is not a writable directory"):
        ReplayBuffer(capacity=10, storage="memmap", scratch_dir=str(blocker / "replay"))
    with pytest.raises(ValueError, match=r"is not a writable directory"):
        ReplayBuffer(capacity=10, storage="memmap", scratch_dir=str(blocker))
    created = tmp_path / "new" / "dir"
    ReplayBuffer(capacity=10, storage="memmap", scratch_dir=str(created))
    assert created.is_dir() and not list(created.iterdir())  # the probe file is gone


def test_extend_with_missing_keys_names_them() -> None:
    batch = transitions(1, 4).exclude(keys.ACTION, keys.NEXT_TRUNCATED)
    with pytest.raises(ValueError, match=r"lacks the keys \['action', \('next', 'truncated'\)\]"):
        ReplayBuffer(capacity=10).extend(batch)


def test_sample_more_than_stored() -> None:
    buffer = ReplayBuffer(capacity=100)
    buffer.extend(transitions(1, 5))
    with pytest.raises(ValueError, match=r"batch_size=8 .* holds 5.*at least batch_size.*init_random_frames"):
        buffer.sample(8)
    with pytest.raises(ValueError, match=r"holds 0"):
        ReplayBuffer(capacity=100).sample(1)
    with pytest.raises(ValueError, match=r"batch_size=0 is invalid"):
        buffer.sample(0)


def test_bad_extend_and_update_priority_calls(backend: str) -> None:
    buffer = ReplayBuffer(capacity=10, prioritized=True, n_step=2)
    with pytest.raises(ValueError, match=r"flat batch .* n_step=2"):
        buffer.extend(transitions(1, 4).reshape(-1))
    buffer.extend(transitions(2, 4))
    with pytest.raises(ValueError, match=r"3 envs.*from 2.*Keep num_envs fixed"):
        buffer.extend(transitions(3, 4))
    with pytest.raises(ValueError, match=r"per-transition shape \[4\].*stores \[3\]"):
        wide = transitions(2, 4)
        wide[keys.OBSERVATION] = torch.zeros(2, 4, 4)
        wide[keys.NEXT_OBSERVATION] = torch.zeros(2, 4, 4)
        buffer.extend(wide)
    size = len(buffer)
    assert buffer._tree is not None and buffer._tree.backend == backend
    before = buffer._tree.leaves(10)
    with pytest.raises(ValueError, match=rf"indices in \[0, 50\], but the buffer holds {size}"):
        buffer.update_priority(torch.tensor([0, 50]), torch.ones(2))
    with pytest.raises(ValueError, match=r"indices in \[-1, 3\]"):
        buffer.update_priority(torch.tensor([3, -1, 3]), torch.ones(3))
    with pytest.raises(ValueError, match=r"2 indices and 3 priorities"):
        buffer.update_priority(torch.tensor([0, 1]), torch.ones(3))
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        buffer.update_priority(torch.tensor([0, 1]), torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        buffer.update_priority(torch.tensor([1, 0]), torch.tensor([float("inf"), 1.0]))
    assert torch.equal(buffer._tree.leaves(10), before)  # every bad call was refused before any write


def test_load_state_dict_from_another_configuration() -> None:
    state = ReplayBuffer(capacity=10, prioritized=True).state_dict()
    with pytest.raises(ValueError, match=r"state has capacity=10, but this buffer has capacity=20"):
        ReplayBuffer(capacity=20, prioritized=True).load_state_dict(state)
    with pytest.raises(ValueError, match=r"state has prioritized=True"):
        ReplayBuffer(capacity=10).load_state_dict(state)


def test_docstring_examples() -> None:
    result = doctest.testmod(replay, extraglobs={"torch": torch, "TensorDict": TensorDict})
    assert result.attempted > 0 and result.failed == 0


# --- in a real fit ----------------------------------------------------------------------------------------------


def test_sac_n_step_replay_never_joins_two_episodes_across_a_resume(tmp_path: Path) -> None:
    """A SAC fit with n_step=3 stops with windows held back, and resumes on envs that restart from reset: every
    stored transition's observation and next observation come from one episode, m steps apart, with the reward
    and discount of those m steps."""
    gamma = 0.5

    def fit(total_frames: int, ckpt_path: Path | None = None) -> SAC:
        pl.seed_everything(0)
        data = RLDataModule(
            "tests.episode_env:EpisodeStep-v0", num_envs=2, frames_per_batch=16, total_frames=total_frames
        )
        model = SAC(
            data.observation_space, data.action_space, gamma=gamma, n_step=3, batch_size=8, buffer_size=1000,
            init_random_frames=16, hidden_sizes=[8],
        )  # fmt: skip
        trainer = quiet_trainer(tmp_path, limit_val_batches=0)
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        if ckpt_path is None:
            trainer.save_checkpoint(tmp_path / "stopped.ckpt")
        return model

    stopped = fit(48)
    assert stopped.replay_buffer._pending.any()  # open windows went into the checkpoint
    resumed = fit(96, tmp_path / "stopped.ckpt")
    stored = contents(resumed.replay_buffer)
    assert len(stored) > len(stopped.replay_buffer)
    episode, step = stored[keys.OBSERVATION].unbind(-1)
    next_episode, next_step = stored[keys.NEXT_OBSERVATION].unbind(-1)
    assert torch.equal(episode, next_episode), "a transition joins two episodes"
    used = (next_step - step).long()
    assert used.min() >= 1 and used.max() <= 3
    discount = stored[NEXT_DISCOUNT].squeeze(-1)
    torch.testing.assert_close(discount, torch.full_like(discount, gamma) ** used)
    # Rewards are the steps: a window from step s holds s + 1, s + 2, ... discounted.
    expected = torch.tensor(
        [sum(gamma**k * (s + 1 + k) for k in range(m)) for s, m in zip(step.tolist(), used.tolist(), strict=True)]
    )
    torch.testing.assert_close(stored[keys.NEXT_REWARD].squeeze(-1), expected)
    # A window shorter than 3 steps ends its episode: at a termination or truncation, or where the resume cut it.
    short = used < 3
    assert stored[keys.NEXT_DONE][short].all()


# --- observations stored once, Dict observations -----------------------------------------------------------------


class EpisodeEnvs:
    """Hand-made collector batches ``[num_envs, T]`` whose observations encode (env, episode, step).

    Each env runs episodes of 2 to 7 steps (lengths vary with env and episode; ``lengths`` overrides them),
    terminated on even episodes and truncated on odd ones. The final observation of an episode encodes its last
    step + 1, never the reset observation (the next episode's step 0). ``reset`` starts a new episode in every env,
    as a collector does after a resume (``is_init`` on the batch's first step). Observations are ``[4, 16, 16]``
    uint8 images (1 KiB: stored once, in the pool), with ``"dict"`` a nested Dict observation around that image, and
    with ``"frames"`` (``"frames_last"``) stacks of the last 4 frames ``[16, 16]`` along the first (last) axis, as
    gymnasium's FrameStackObservation gives them: an episode's first stack repeats its first frame. The newest frame
    (the image's last channel) holds (env, episode, step) in its first 3 pixels.
    """

    def __init__(self, num_envs: int, observation: str = "image", lengths: int | None = None) -> None:
        self.num_envs, self.kind, self.lengths = num_envs, observation, lengths
        self.dict_obs = observation == "dict"
        self.episode = [0] * num_envs
        self.step = [0] * num_envs

    def length(self, env: int, episode: int) -> int:
        return self.lengths or 2 + (3 * env + 5 * episode) % 6

    def image(self, env: int, episode: int, step: int) -> torch.Tensor:
        if self.kind.startswith("frames"):
            stack = torch.stack([self.frame(env, episode, max(step - 3 + i, 0)) for i in range(4)])
            return stack if self.kind == "frames" else stack.movedim(0, -1).contiguous()
        image = torch.full((4, 16, 16), (env * 37 + episode * 11 + step * 3) % 251, dtype=torch.uint8)
        image[-1, 0, :3] = torch.tensor([env, episode, step], dtype=torch.uint8)
        return image

    @staticmethod
    def frame(env: int, episode: int, step: int) -> torch.Tensor:
        frame = torch.full((16, 16), (env * 37 + episode * 11 + step * 3) % 251, dtype=torch.uint8)
        frame[0, :3] = torch.tensor([env, episode, step], dtype=torch.uint8)
        return frame

    def observation(self, env: int, episode: int, step: int) -> dict[str, Any]:
        return {
            "pixels": self.image(env, episode, step),
            "state": {"ids": torch.tensor([env, episode, step], dtype=torch.float64)},
            "step": torch.tensor(step),  # a Discrete leaf: int64 []
        }

    def batch(self, steps: int, reset: bool = False) -> TensorDict:
        if reset:
            self.episode = [episode + 1 for episode in self.episode]
            self.step = [0] * self.num_envs
        rows: list[list[dict[str, Any]]] = []
        for env in range(self.num_envs):
            row = []
            for _ in range(steps):
                episode, step = self.episode[env], self.step[env]
                done = step + 1 == self.length(env, episode)
                row.append(
                    {
                        "obs": self.observation(env, episode, step),
                        "next_obs": self.observation(env, episode, step + 1),
                        "action": torch.tensor([env, episode, step], dtype=torch.float32),
                        "is_init": torch.tensor([step == 0]),
                        "reward": torch.tensor([float(step + 1)]),
                        "terminated": torch.tensor([done and episode % 2 == 0]),
                        "truncated": torch.tensor([done and episode % 2 == 1]),
                    }
                )
                self.episode[env], self.step[env] = (episode + 1, 0) if done else (episode, step + 1)
            rows.append(row)

        def stack(name: str) -> Any:
            return torch.stack([torch.stack([step[name] for step in row]) for row in rows])

        def observations(name: str) -> Any:
            td = TensorDict(
                {
                    k: torch.stack([torch.stack([step[name][k] for step in row]) for row in rows])
                    for k in ("pixels", "step")
                }
                | {
                    "state": {
                        "ids": torch.stack([torch.stack([step[name]["state"]["ids"] for step in row]) for row in rows])
                    }
                },
                batch_size=[self.num_envs, steps],
            )
            return td if self.dict_obs else td["pixels"]

        terminated, truncated = stack("terminated"), stack("truncated")
        return TensorDict(
            {
                keys.OBSERVATION: observations("obs"),
                keys.ACTION: stack("action"),
                keys.IS_INIT: stack("is_init"),
                keys.NEXT: {
                    keys.OBSERVATION: observations("next_obs"),
                    keys.REWARD: stack("reward"),
                    keys.TERMINATED: terminated,
                    keys.TRUNCATED: truncated,
                    keys.DONE: terminated | truncated,
                },
            },
            batch_size=[self.num_envs, steps],
        )


def ids_of(td: TensorDict, key: Any) -> torch.Tensor:
    """(env, episode, step) of each observation, ``[n, 3]`` int64: the first pixels of its newest frame."""
    pixels = td.get(key)
    pixels = pixels["pixels"] if isinstance(pixels, TensorDict) else pixels
    return (pixels[:, 0, :3, -1] if pixels.shape[-1] == 4 else pixels[:, -1, 0, :3]).long()


def check_transitions(sample: TensorDict, gamma: float) -> None:
    """Every transition's next observation is its own episode's, m steps on (m from the discount), and each Dict leaf
    encodes the same (env, episode, step) as the image."""
    obs = ids_of(sample, keys.OBSERVATION)
    env, episode, step = obs.unbind(-1)
    next_env, next_episode, next_step = ids_of(sample, keys.NEXT_OBSERVATION).unbind(-1)
    assert torch.equal(env, next_env) and torch.equal(episode, next_episode), "a next observation of another episode"
    used = (next_step - step).tolist()
    discount = sample[NEXT_DISCOUNT].squeeze(-1).tolist()
    for m, d in zip(used, discount, strict=True):
        assert m >= 1 and math.isclose(d, gamma**m, rel_tol=1e-6), (m, d)
    assert torch.equal(sample[keys.ACTION].long(), obs)
    for td in (sample[keys.OBSERVATION], sample[keys.NEXT_OBSERVATION]):
        if isinstance(td, TensorDict):
            ids = td["pixels"][:, -1, 0, :3].long()
            assert td["state", "ids"].dtype == torch.float32  # observation_dtype applies to floating leaves
            assert torch.equal(td["state", "ids"].long(), ids) and torch.equal(td["step"], ids[:, 2])
            assert td["step"].dtype == torch.int64 and td["step"].shape == (len(ids),)


def naive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffers built from here on store every observation per transition, twice (the naive layout)."""
    monkeypatch.setattr(replay, "SHARED_MIN_BYTES", math.inf)


def fill_both(
    shared: ReplayBuffer, reference: ReplayBuffer, envs: list[EpisodeEnvs], steps: list[int], reset_at: int = -1
) -> None:
    for i, length in enumerate(steps):
        batch = envs[0].batch(length, reset=i == reset_at)
        assert torch.equal(batch.get(keys.ACTION), envs[1].batch(length, reset=i == reset_at).get(keys.ACTION))
        assert torch.equal(shared.extend(batch), reference.extend(batch.clone()))


def check_pool(buffer: ReplayBuffer) -> None:
    """The pool's bookkeeping: each slot's count is what points at it, and no slot in use is on the free stack."""
    assert buffer._shared
    refs = torch.zeros_like(buffer._pool_refs)
    held = [buffer._data[key][: len(buffer)].reshape(-1) for key in replay._SLOT_KEYS]
    slots = buffer._ancestry(torch.cat([*held, buffer._held_slots()]))  # frame stacks: each frame of a stack too
    refs.index_add_(0, slots, torch.ones_like(slots, dtype=torch.int32))
    assert torch.equal(refs, buffer._pool_refs)
    free = buffer._free[: buffer._free_count]
    assert len(free.unique()) == len(free) and (refs[free] == 0).all()
    assert (refs[: buffer._pool_used] == 0).sum() == len(free)  # every unreferenced slot is free again


@pytest.mark.parametrize(
    ("n_step", "prioritized", "storage", "observation"),
    [
        (1, False, "memory", "image"),
        (3, True, "memmap", "dict"),
        (1, True, "memmap", "image"),
        (3, False, "memory", "dict"),
        (3, True, "memory", "frames"),
        (1, False, "memmap", "frames_last"),
    ],
)
def test_shared_observations_sample_exactly_what_the_naive_layout_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_step: int, prioritized: bool, storage: str, observation: str
) -> None:
    """Batches of 3 envs with episodes of 2-7 steps and batches of 1-6 steps into a 40-transition ring (wrapping many
    times), a reset of every env in between, and a checkpoint round trip: the buffer that stores each observation
    once samples the same transitions as the one storing both observations per transition, value for value."""

    def make(name: str) -> ReplayBuffer:
        store = cast(Literal["memory", "memmap"], storage)
        return ReplayBuffer(
            capacity=40, storage=store, scratch_dir=str(tmp_path / name), prioritized=prioritized, n_step=n_step,
            gamma=0.5,
        )  # fmt: skip

    shared = make("shared")
    with monkeypatch.context() as patch:
        naive(patch)
        reference = make("naive")
        restored = make("restored")
    envs = [EpisodeEnvs(3, observation), EpisodeEnvs(3, observation)]
    fill_both(shared, reference, envs, [5, 4, 6, 1, 5, 3, 6, 2, 5], reset_at=4)
    assert shared._shared and not reference._shared
    assert shared._stack_axis == {"frames": 0, "frames_last": 2}.get(observation)  # single frames in the pool
    check_pool(shared)
    # The checkpoint: state_dict -> torch.save -> torch.load(weights_only=True) -> load_state_dict.
    path = tmp_path / "buffer.pt"
    if storage == "memmap":
        RLCheckpointIO(external_bytes=256).save_checkpoint({"buffer": shared.state_dict()}, path)
        state = RLCheckpointIO().load_checkpoint(path)["buffer"]
    else:
        torch.save(shared.state_dict(), path)
        state = torch.load(path, weights_only=True)
    restored = make("restored")
    restored.load_state_dict(state)
    check_pool(restored)
    for i, length in enumerate([4, 6, 3, 5, 5, 2, 6]):
        batch = envs[0].batch(length, reset=i == 3)
        envs[1].batch(length, reset=i == 3)
        index = shared.extend(batch)
        assert torch.equal(index, reference.extend(batch.clone()))
        assert torch.equal(index, restored.extend(batch.clone()))
        for buffer in (shared, restored):
            check_pool(buffer)
            if buffer._stack_axis is None:  # no growth: far from two observations per transition
                assert buffer._pool_used <= 40 + 40 // 16 + 2 * 18 + 6 * n_step
            else:  # frames: 1 a step, 4 an episode's first stack, plus held-back windows: against the naive layout's 8
                assert int((buffer._pool_refs > 0).sum()) <= 3 * 40
            for seed in range(3):
                a = reference.sample(16, generator=torch.Generator().manual_seed(seed))
                b = buffer.sample(16, generator=torch.Generator().manual_seed(seed))
                assert set(a.keys(True)) == set(b.keys(True))
                for key in a.keys(True, True):
                    assert a.get(key).dtype == b.get(key).dtype and torch.equal(a.get(key), b.get(key)), key
                check_transitions(b, gamma=0.5)
            check_transitions(contents(buffer), gamma=0.5)


def test_the_pool_grows_when_most_transitions_end_an_episode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One-step episodes: every next observation is a final one, so the pool needs two slots per transition, more
    than it starts with. It grows, and keeps every observation of the stored transitions."""
    for storage in ("memory", "memmap"):
        store = cast(Literal["memory", "memmap"], storage)
        shared = ReplayBuffer(capacity=64, storage=store, scratch_dir=str(tmp_path / storage))
        with monkeypatch.context() as patch:
            naive(patch)
            reference = ReplayBuffer(capacity=64)
        envs = [EpisodeEnvs(2, lengths=1), EpisodeEnvs(2, lengths=1)]
        fill_both(shared, reference, envs, [8] * 12)
        check_pool(shared)
        assert len(shared._pool_refs) > 64 + 64 // 16 + 2 * 16 + 4  # grew
        assert shared._pool_used <= 2 * 64 + 2 * 16 + 4
        if storage == "memmap":  # the old pool's files are gone
            assert shared._pool_dir is not None
            assert sorted(path.name for path in (tmp_path / storage).iterdir()) == [shared._pool_dir, "transitions"]
        a = reference.sample(64, generator=torch.Generator().manual_seed(0))
        b = shared.sample(64, generator=torch.Generator().manual_seed(0))
        assert (a == b).all()
        check_transitions(b, gamma=0.99)


def test_long_episodes_store_about_one_observation_per_transition() -> None:
    """Episodes of 50 steps, batches of 4 envs x 8 steps, a 400-transition ring filled 3 times: about one
    observation per transition (plus the final ones and a batch's tail), half the naive layout's two."""
    buffer = ReplayBuffer(capacity=400, n_step=3)
    envs = EpisodeEnvs(4, lengths=50)
    for _ in range(40):
        buffer.extend(envs.batch(8))
    check_pool(buffer)
    live = int((buffer._pool_refs > 0).sum())
    assert live <= 400 + 400 // 50 + 4 * 3 + 4, live  # transitions, episode ends, held-back windows, tail
    assert buffer._pool_used <= 400 + 400 // 16 + 2 * 32 + 2 * 4 * 3  # never grew, and no slot was wasted
    check_transitions(contents(buffer), gamma=0.99)


def test_frame_stacks_store_about_one_frame_per_transition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stacks of 4 frames, episodes of 50 steps: the pool holds single frames, about one per transition (plus 4 for
    each episode's first stack), a quarter of one observation per transition; the samples are the naive layout's."""
    buffer = ReplayBuffer(capacity=400, n_step=3)
    with monkeypatch.context() as patch:
        naive(patch)
        reference = ReplayBuffer(capacity=400, n_step=3)
    envs = [EpisodeEnvs(4, "frames", lengths=50), EpisodeEnvs(4, "frames", lengths=50)]
    fill_both(buffer, reference, envs, [8] * 40)
    check_pool(buffer)
    assert buffer._stack_axis == 0 and buffer._pool[()].shape[1:] == (16, 16)
    live = int((buffer._pool_refs > 0).sum())
    assert live <= 400 + 4 * (400 // 50 + 2) + 4 * 3 + 4, live  # frames, episodes' first stacks, windows, tail
    for seed in range(3):
        a = reference.sample(64, generator=torch.Generator().manual_seed(seed))
        assert (a == buffer.sample(64, generator=torch.Generator().manual_seed(seed))).all()
    check_transitions(contents(buffer), gamma=0.99)


def test_observations_that_stop_sliding_are_stored_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first batches are frame stacks (the pool holds single frames), then the same envs send images whose
    channels do not slide: each is checked and stored as a chain of 4 frames, and every sample is still exact."""
    shared = ReplayBuffer(capacity=40, n_step=2, prioritized=True)
    with monkeypatch.context() as patch:
        naive(patch)
        reference = ReplayBuffer(capacity=40, n_step=2, prioritized=True)
    stacks = [EpisodeEnvs(2, "frames"), EpisodeEnvs(2, "frames")]
    fill_both(shared, reference, stacks, [5, 5])
    assert shared._stack_axis == 0
    images = [EpisodeEnvs(2), EpisodeEnvs(2)]
    fill_both(shared, reference, images, [4, 6, 5, 5, 4], reset_at=0)
    check_pool(shared)
    for seed in range(3):
        a = reference.sample(32, generator=torch.Generator().manual_seed(seed))
        b = shared.sample(32, generator=torch.Generator().manual_seed(seed))
        assert (a == b).all()
        check_transitions(b, gamma=0.99)


def test_flat_batches_share_observations_where_they_are_equal(monkeypatch: pytest.MonkeyPatch) -> None:
    shared = ReplayBuffer(capacity=30)
    with monkeypatch.context() as patch:
        naive(patch)
        reference = ReplayBuffer(capacity=30)
    envs = EpisodeEnvs(2)
    for _ in range(5):
        batch = envs.batch(4).reshape(-1)
        assert torch.equal(shared.extend(batch), reference.extend(batch))
    check_pool(shared)
    assert (contents(shared) == contents(reference)).all()
    assert shared._tail is None  # a flat batch says nothing of its env's next batch


def test_dict_observations_stored_per_leaf() -> None:
    """Small Dict observations (below SHARED_MIN_BYTES: stored per transition) come back as nested TensorDicts with
    their leaves' shapes and dtypes (floating leaves as observation_dtype), through n-step windows and a checkpoint."""

    def batch(start: int) -> TensorDict:
        td = transitions(2, 6, start=start, terminated=((1, 2),))
        ident = td[keys.OBSERVATION][..., 0]
        for key, offset in ((keys.OBSERVATION, 0.0), (keys.NEXT_OBSERVATION, 0.5)):
            value = ident + offset
            td.set(
                key,
                TensorDict(
                    {"pos": {"xy": value.double().unsqueeze(-1).expand(2, 6, 2)}, "goal": (2 * value).long()}, [2, 6]
                ),
            )
        return td

    buffer = ReplayBuffer(capacity=50, n_step=2, gamma=0.5)
    buffer.extend(batch(0))
    assert not buffer._shared
    assert set(buffer._data) >= {("observation", "pos", "xy"), ("next", "observation", "goal")}
    restored = ReplayBuffer(capacity=50, n_step=2, gamma=0.5)
    restored.load_state_dict(pickle.loads(pickle.dumps(buffer.state_dict())))
    for replica in (buffer, restored):
        replica.extend(batch(6))
    stored, again = contents(buffer), contents(restored)
    assert (stored == again).all()
    obs, nxt = stored[keys.OBSERVATION], stored[keys.NEXT_OBSERVATION]
    assert isinstance(obs, TensorDict) and obs.batch_size == (len(buffer),)
    assert obs["pos", "xy"].dtype == torch.float32 and obs["pos", "xy"].shape == (len(buffer), 2)
    assert obs["goal"].dtype == torch.int64 and obs["goal"].shape == (len(buffer),)
    # n-step: the next observation is the window's last (m = 1 or 2 steps on), in every leaf.
    used = (nxt["pos", "xy"][:, 0] - 0.5 - obs["pos", "xy"][:, 0]).long() + 1
    assert set(used.tolist()) <= {1, 2} and (used == 1).any() and (used == 2).any()
    torch.testing.assert_close(stored[NEXT_DISCOUNT].squeeze(-1), 0.5 ** used.float())
    assert torch.equal(nxt["goal"], (2 * nxt["pos", "xy"][:, 0]).long())
    sample = buffer.sample(8, generator=torch.Generator().manual_seed(0))
    assert isinstance(sample[keys.NEXT_OBSERVATION], TensorDict) and sample[
        "next", "observation", "pos", "xy"
    ].shape == (8, 2)


def test_bad_dict_observations(monkeypatch: pytest.MonkeyPatch) -> None:
    envs = EpisodeEnvs(2, "dict")
    buffer = ReplayBuffer(capacity=20, observation_dtype="float64")
    buffer.extend(envs.batch(3))
    assert buffer._shared
    wrong_keys = envs.batch(3)
    wrong_keys[keys.OBSERVATION] = wrong_keys[keys.OBSERVATION].exclude("step")
    with pytest.raises(ValueError, match=r"observation has the entries \['pixels', 'state.ids'\], but its \('next'"):
        buffer.extend(wrong_keys)
    wrong_keys[keys.NEXT_OBSERVATION] = wrong_keys[keys.NEXT_OBSERVATION].exclude("step")
    with pytest.raises(ValueError, match=r"buffer stores \['pixels', 'state.ids', 'step'\]"):
        buffer.extend(wrong_keys)
    wrong_shape = envs.batch(3)
    for key in (keys.OBSERVATION, keys.NEXT_OBSERVATION):
        wrong_shape[key]["state", "ids"] = torch.zeros(2, 3, 4, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"\('observation', 'state', 'ids'\) has per-transition shape \[4\].*stores \[3\]"
    ):
        buffer.extend(wrong_shape)
    check_pool(buffer)  # the refused batches changed nothing
    with pytest.raises(ValueError, match=r"stores observations as float64.*observation_dtype='float32'"):
        ReplayBuffer(capacity=20).load_state_dict(buffer.state_dict())
    dotted = envs.batch(2)
    for key in (keys.OBSERVATION, keys.NEXT_OBSERVATION):
        dotted[key]["a.b"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"Dict keys \['a.b'\] contain '.'"):
        ReplayBuffer(capacity=20).extend(dotted)


def test_shared_buffer_extended_under_inference_mode() -> None:
    """The collector makes inference tensors: n-step windows closed by a reset and the pool's counts, all made under
    inference mode, keep working outside it."""
    buffer = ReplayBuffer(capacity=30, n_step=3, prioritized=True)
    envs = EpisodeEnvs(2)
    with torch.inference_mode():
        buffer.extend(envs.batch(4))
        buffer.extend(envs.batch(4, reset=True))
    buffer.extend(envs.batch(4, reset=True))
    buffer.extend(envs.batch(4))
    check_pool(buffer)
    sample = buffer.sample(8)
    buffer.update_priority(sample[INDEX], torch.ones(8))
    check_transitions(contents(buffer), gamma=0.99)


def test_n_step_refusal_leaves_the_pool_untouched() -> None:
    buffer = ReplayBuffer(capacity=20, n_step=3)
    buffer.extend(EpisodeEnvs(2).batch(4))
    before = (buffer._pool_refs.clone(), buffer._free_count, buffer._pool_used, buffer._tail)
    with pytest.raises(ValueError, match=r"3 envs.*from 2"):
        buffer.extend(EpisodeEnvs(3).batch(4).exclude(keys.IS_INIT))
    assert torch.equal(before[0], buffer._pool_refs) and before[1:3] == (buffer._free_count, buffer._pool_used)
    assert buffer._tail is before[3]
    check_pool(buffer)
