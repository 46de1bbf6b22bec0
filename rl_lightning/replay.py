"""Replay buffers on tensordict: a ring of preallocated tensors in RAM or memory-mapped on disk.

Sampling is uniform or prioritized (proportional, Schaul et al. 2016, on a vectorized sum tree), and
transitions are stored as 1-step or n-step transitions. Dict observations are stored leaf by leaf; large
observations (images) once each, shared by a transition's observation and the next observation of the one before,
and frame stacks as single frames. See :class:`ReplayBuffer`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, cast

import torch
from tensordict import MemoryMappedTensor, TensorDict, TensorDictBase

from rl_lightning import keys
from rl_lightning._checks import check_choice, check_int, check_non_negative, check_positive, check_range
from rl_lightning.sum_tree import SumTree

Key = str | tuple[str, ...]

DISCOUNT = "discount"
NEXT_DISCOUNT = (keys.NEXT, DISCOUNT)
"""``gamma ** k``, k the number of rewards summed into ``("next", "reward")`` (``gamma`` for 1-step)."""
INDEX = "index"
"""Storage index of each sampled transition, ``int64 [batch_size]`` (what ``update_priority`` takes)."""
WEIGHT = "weight"
"""Importance-sampling weight of each sampled transition, ``float32 [batch_size, 1]`` (prioritized buffers only)."""
TD_ERROR = "td_error"
"""Where a loss writes each sampled transition's TD error ``[batch_size]`` (torchrl's key): its new priority."""
PRIORITY_EPS = 1e-6
"""``ReplayBuffer``'s default ``priority_eps``, added to ``|priority|`` so that no transition has a zero chance."""

TRANSITION_KEYS = keys.TRANSITION_KEYS
"""The keys ``extend`` needs in a batch; every other key of the batch is dropped."""
STORED_KEYS: tuple[Key, ...] = (*TRANSITION_KEYS, NEXT_DISCOUNT)
"""The keys of a stored (and sampled) transition."""
SHARED_MIN_BYTES = 1024
"""Observations of at least this many bytes (all leaves of a Dict observation together) are stored once each, in a
pool of slots that ``observation`` and ``("next", "observation")`` point at (see :class:`ReplayBuffer`)."""

OBSERVATION_SLOT = "observation_slot"
NEXT_OBSERVATION_SLOT = (keys.NEXT, "observation_slot")
_SLOT_KEYS: tuple[Key, ...] = (OBSERVATION_SLOT, NEXT_OBSERVATION_SLOT)
"""Per stored transition, where its observation and next observation are in the pool (int64)."""
_POOL = "pool."
_NO_SLOTS = torch.zeros(0, dtype=torch.int64)
_FRAME_PREV = "frame_prev"
"""The pool's entry, with frame stacks, of the slot whose frames come before each slot's own (int64)."""
"""The prefix of the pool's entries in a state dict."""
_OBSERVATION_KEYS = (keys.OBSERVATION, keys.NEXT_OBSERVATION)
_NEXT_SCALAR_KEYS: tuple[tuple[str, str], ...] = (
    keys.NEXT_REWARD,
    keys.NEXT_TERMINATED,
    keys.NEXT_TRUNCATED,
    keys.NEXT_DONE,
    NEXT_DISCOUNT,
)

# TensorDict's constructor without the checks (the entries built here are known to fit); the public one costs
# about 5 us more per sample, some 10% of a uniform sample.
_new_tensordict = getattr(TensorDict, "_new_unsafe", TensorDict)


def max_priority_alpha(priority_eps: float) -> float:
    """The largest priority exponent for which the smallest priority, ``priority_eps ** alpha``, is still a
    positive float32 (a zero leaf could never be sampled); ``inf`` when ``priority_eps >= 1``."""
    if priority_eps >= 1.0:
        return math.inf
    return math.log(torch.finfo(torch.float32).tiny) / math.log(priority_eps)


def n_step_returns(
    reward: torch.Tensor, done: torch.Tensor, n_step: int, gamma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Discounted sums of up to ``n_step`` rewards along trajectories laid out ``[num_envs, T]``.

    The window of step t holds the rewards of steps ``t, ..., t + n_step - 1`` and stops after the first
    step whose ``done`` is set (the rest of the row belongs to the next episode).

    Args:
        reward: ``[num_envs, T]`` rewards.
        done: ``[num_envs, T]`` episode-end flags of each transition.
        n_step: the longest window.
        gamma: discount factor.

    Returns:
        ``(returns, steps, complete)``, all ``[num_envs, T]``: the discounted sums, the number of rewards in
        each window (1 to ``n_step``), and whether the window is complete: it holds ``n_step`` rewards or ends
        at a ``done``. Windows that run past the end of the rows are incomplete.

    Example:
        >>> r = torch.tensor([[1.0, 1.0, 1.0]]); d = torch.tensor([[False, True, False]])
        >>> ret, steps, complete = n_step_returns(r, d, n_step=2, gamma=0.5)
        >>> ret.tolist(), steps.tolist(), complete.tolist()
        ([[1.5, 1.0, 1.0]], [[2, 1, 1]], [[True, True, False]])
    """
    length = reward.shape[-1]
    returns = torch.zeros_like(reward)
    steps = torch.zeros(reward.shape, dtype=torch.int64, device=reward.device)
    alive = torch.ones(reward.shape, dtype=torch.bool, device=reward.device)  # no episode end so far in the window
    ended = torch.zeros_like(alive)
    for k in range(min(n_step, length)):
        use = alive[:, : length - k]
        returns[:, : length - k] += (gamma**k) * reward[:, k:] * use
        steps[:, : length - k] += use
        ended[:, : length - k] |= use & done[:, k:]
        use &= ~done[:, k:]
    return returns, steps, ended | (steps == n_step)


class ReplayBuffer:
    """A ring buffer of transitions with uniform or prioritized sampling and optional n-step returns.

    **Storage.** One preallocated tensor ``[capacity, ...]`` per stored key, allocated from the shapes and
    dtypes of the first batch (floating observations as ``observation_dtype``, float32 by default: what the
    networks see; integer observations such as uint8 images as they are); once full, each new transition
    overwrites the oldest. ``storage="memory"`` keeps the tensors in RAM; ``storage="memmap"`` keeps them in
    memory-mapped files in ``scratch_dir`` (tensordict's ``MemoryMappedTensor``), so a buffer may be larger than
    RAM. Sampled batches are copied to ``device``; the storage and the priorities stay on the CPU.

    **Dict observations.** ``observation`` and ``("next", "observation")`` may be TensorDicts (a
    ``gym.spaces.Dict``, nested or not): each leaf is stored in a tensor of its own and sampled back in the same
    nested TensorDict, with its own shape and dtype (``observation_dtype`` applies to the floating leaves).

    **Observations stored once.** Observations of :data:`SHARED_MIN_BYTES` or more (all leaves together: images)
    live in a pool of observation slots, and each transition holds the slot of its observation and of its next
    observation. In a collector batch the next observation of (env e, step t) is the observation of (e, t + 1)
    unless the episode ended there, and the next observation of a batch's last step is the first observation of
    the next batch: where the two are equal, bit for bit (checked on every batch, never assumed), both point at one
    slot. A transition then costs one observation instead of two, plus one where an episode ends (its final
    observation). A slot is written again only once nothing points at it: no stored transition, no n-step window
    held back, not the last next observation of the previous batch. So every sample holds exactly the
    observations of its transitions, as if both were stored per transition, across the ring's wrap-around and
    checkpoints. The pool holds ``capacity + capacity // 16`` slots and two batches more, and grows by a quarter in
    the rare case that more observations are alive (short episodes: one final observation each); slots never
    used are never written, so they take no memory. Smaller observations are stored per transition, twice: a
    slot index would cost about what it saves.

    **Frame stacks.** When the first batch's observations are stacks of frames along their first or last axis
    (gymnasium's ``FrameStackObservation``: ``[4, 84, 84]``; or stacked channels last) whose next observation's first
    k - 1 frames are the observation's last k - 1, bit for bit, each slot holds a single frame and the slot of the
    observation before it, and stacks are rebuilt at sample time from a slot and its k - 1 predecessors. A next
    observation that slides its observation's stack by one frame (checked on every batch, never assumed) costs one
    frame; any other (an episode's first stack, a stack that does not slide) a chain of k frames. A slot stays
    alive while any stack that holds its frame does. So an Atari transition costs about one 84x84 frame, a quarter
    of an observation, and samples are still exactly the stacks collected.

    **Stored transitions.** ``extend`` keeps only ``observation``, ``action`` and ``("next", "observation" /
    "reward" / "terminated" / "truncated" / "done")`` and adds ``("next", "discount")``. With ``n_step=1``
    that is ``gamma``. With ``n_step > 1`` every transition is stored as an n-step transition along its env's
    trajectory: ``("next", "reward") = sum_{k<m} gamma^k r_{t+k}`` where the window of m rewards holds
    ``n_step`` steps or stops at the first episode end (``("next", "done")``) inside it; ``("next",
    "observation")`` and the ``("next", ...)`` flags are those of the window's last step (the final
    observation when the episode ended there), and ``("next", "discount") = gamma^m``. So a loss always
    bootstraps with ``reward + discount * (1 - terminated) * V(next_observation)``, whatever ``n_step``.

    A window needs the rewards of the steps after it: the last ``n_step - 1`` transitions of each env in a
    batch are held back until the next ``extend`` completes their windows (a ``done`` inside the window
    completes it at once), so ``extend`` may store fewer transitions than the batch holds. Consecutive
    batches must come from the same envs, in the same order (what :class:`~rl_lightning.collector.Collector`
    gives). When the envs were reset in between (a resumed run, a new collector: the batch's first step is marked
    ``is_init``), the held-back windows of an episode that had not ended close there, as truncated: ``m < n_step``
    rewards, ``discount = gamma^m``, bootstrapping from their own last next observation; they are never joined to
    the new episode.

    **Sampling.** Uniform, or with ``prioritized=True`` proportional to ``p_i = (|priority_i| + priority_eps) **
    alpha`` (Schaul et al. 2016): stratified (the total mass split into ``batch_size`` equal segments, one
    uniform draw in each), on a sum tree, with importance weights ``w_i = (N P(i)) ** -beta / max_j w_j``,
    ``max_j`` over the whole buffer (from the smallest priority). ``beta`` anneals linearly to ``beta_final``
    over ``beta_steps`` calls to :meth:`sample`. New transitions get the largest priority seen so far.

    **Checkpoints.** :meth:`state_dict` holds only tensors, numbers, strings, lists and dicts (fit for
    ``torch.load(weights_only=True)``) and the stored transitions themselves (with the observation pool, its
    entries named ``pool.<key>``); with ``"memmap"`` storage they are views of the mapped files (nothing is copied
    into RAM), which rl_lightning's checkpoint IO (:class:`~rl_lightning.checkpoint.RLCheckpointIO`) writes into a
    directory beside the ``.ckpt``: each checkpoint keeps its own snapshot, and loading one copies it back into this
    buffer's files.

    Args:
        capacity: the most transitions the buffer holds.
        storage: ``"memory"`` (RAM) or ``"memmap"`` (memory-mapped files in ``scratch_dir``).
        scratch_dir: directory of the memory-mapped files (required for ``"memmap"``; created if missing; its
            buffer files are replaced by the first ``extend``).
        prioritized: sample proportionally to priorities instead of uniformly.
        alpha: priority exponent (0 is uniform).
        beta: importance-sampling exponent at the first ``sample`` call.
        beta_final: importance-sampling exponent after ``beta_steps`` calls.
        beta_steps: number of ``sample`` calls over which ``beta`` anneals linearly to ``beta_final``.
        priority_eps: added to ``|priority|`` so that no transition has a zero chance.
        n_step: rewards summed into each stored transition (1 for plain transitions).
        gamma: discount factor of the n-step returns and of ``("next", "discount")``.
        device: where sampled batches are returned.
        observation_dtype: ``"float32"`` or ``"float64"``: the dtype floating observations (``observation`` and
            ``("next", "observation")``, each floating leaf of a Dict observation) are stored and sampled as.
            float32 halves the memory of float64 observations (MuJoCo's) and changes nothing the networks see
            (they compute in float32); integer observations are stored as they are.

    Example:
        >>> buffer = ReplayBuffer(capacity=100, prioritized=True)
        >>> batch = TensorDict(
        ...     {
        ...         "observation": torch.randn(2, 8, 3),
        ...         "action": torch.randn(2, 8, 1),
        ...         "next": {
        ...             "observation": torch.randn(2, 8, 3),
        ...             "reward": torch.randn(2, 8, 1),
        ...             "terminated": torch.zeros(2, 8, 1, dtype=torch.bool),
        ...             "truncated": torch.zeros(2, 8, 1, dtype=torch.bool),
        ...             "done": torch.zeros(2, 8, 1, dtype=torch.bool),
        ...         },
        ...     },
        ...     batch_size=[2, 8],
        ... )
        >>> buffer.extend(batch).tolist()[:4], len(buffer)
        ([0, 1, 2, 3], 16)
        >>> sample = buffer.sample(4)
        >>> sample["index"].shape, sample["weight"].shape, sample["next", "discount"][0].item()
        (torch.Size([4]), torch.Size([4, 1]), 0.9900000095367432)
        >>> buffer.update_priority(sample["index"], torch.rand(4))
    """

    def __init__(
        self,
        capacity: int,
        storage: Literal["memory", "memmap"] = "memory",
        scratch_dir: str | None = None,
        prioritized: bool = False,
        alpha: float = 0.6,
        beta: float = 0.4,
        beta_final: float = 1.0,
        beta_steps: int = 100_000,
        priority_eps: float = PRIORITY_EPS,
        n_step: int = 1,
        gamma: float = 0.99,
        device: str | torch.device = "cpu",
        observation_dtype: Literal["float32", "float64"] = "float32",
    ) -> None:
        check_int("capacity", capacity, hint="Give the number of transitions the buffer holds, e.g. 1_000_000.")
        check_choice("storage", storage, ("memory", "memmap"))
        if storage == "memmap" and scratch_dir is None:
            raise ValueError(
                "storage='memmap' needs scratch_dir, the directory of the memory-mapped files: pass "
                "scratch_dir='path/to/dir', or use storage='memory'."
            )
        check_non_negative("alpha", alpha, "alpha is the priority exponent: 0 samples uniformly, 0.6 is the paper's.")
        check_range("beta", beta, 0.0, 1.0, "beta is the importance-sampling exponent (0.4 is the paper's).")
        check_range("beta_final", beta_final, 0.0, 1.0, "beta anneals to beta_final, usually 1.0.")
        check_int("beta_steps", beta_steps, hint="It is the number of sample() calls over which beta anneals.")
        check_positive("priority_eps", priority_eps, "A zero priority would never be sampled again; e.g. 1e-6.")
        if prioritized and alpha > max_priority_alpha(priority_eps):
            raise ValueError(
                f"priority_eps={priority_eps!r} with alpha={alpha!r} makes the smallest priority, priority_eps ** "
                "alpha, underflow float32, so some transitions could never be sampled. Raise priority_eps or lower "
                f"alpha (at most {max_priority_alpha(priority_eps):.2f} with this priority_eps)."
            )
        check_int("n_step", n_step, hint="Use n_step=1 for plain 1-step transitions.")
        check_range("gamma", gamma, 0.0, 1.0, "gamma is the discount factor, e.g. 0.99.")
        if observation_dtype not in ("float32", "float64"):
            raise ValueError(
                f"observation_dtype={observation_dtype!r} is invalid: expected 'float32' (the default, what the "
                "networks compute in) or 'float64' (to keep float64 observations, such as MuJoCo's, as they are)."
            )
        if scratch_dir is not None and storage == "memmap":  # the first write to disk, once every value is checked
            _prepare_scratch_dir(scratch_dir)
        self.capacity = capacity
        self.storage = storage
        self.scratch_dir = None if scratch_dir is None else str(scratch_dir)
        self.prioritized = prioritized
        self.alpha = alpha
        self.beta = beta
        self.beta_final = beta_final
        self.beta_steps = beta_steps
        self.priority_eps = priority_eps
        self.n_step = n_step
        self.gamma = gamma
        self.device = torch.device(device)
        self.observation_dtype = observation_dtype
        self._observation_dtype: torch.dtype = getattr(torch, observation_dtype)

        self._data: dict[Key, torch.Tensor] = {}  # per stored key, [capacity, ...]
        self._cursor = 0  # next index written
        self._size = 0
        self._sample_calls = 0
        self._max_priority = 1.0
        self._tree = SumTree(capacity) if prioritized else None
        # n-step: the last n_step - 1 raw transitions of each env, and which of them are not stored yet.
        self._carry: dict[Key, torch.Tensor] | None = None
        self._pending = torch.zeros(0, 0, dtype=torch.bool)
        # The observation's leaves (() for a plain tensor, the nested keys of a Dict observation), from the first batch.
        self._leaves: list[tuple[str, ...]] = []
        self._shared = False  # observations in the pool of slots (large ones) rather than per transition
        self._shared_min_bytes = SHARED_MIN_BYTES
        self._pool: dict[tuple[str, ...], torch.Tensor] = {}  # per leaf, [pool slots, ...]
        self._pool_refs = torch.zeros(0, dtype=torch.int32)  # per slot: transitions, held-back windows, tails on it
        self._pool_used = 0  # slots [0, _pool_used) were written at least once; those above never were
        self._free = torch.zeros(0, dtype=torch.int64)  # a stack of the unreferenced slots below _pool_used
        self._free_count = 0
        self._tail: torch.Tensor | None = None  # per env, the slot of the last batch's last next observation
        self._pool_dir: str | None = None  # the pool's folder in scratch_dir (memmap storage)
        # Frame stacks: each slot holds one frame, and the slot of the observation whose frames come before it.
        self._stack_axis: int | None = None  # the stack's axis in an observation, when slots hold single frames
        self._stack_size = 0
        self._prev = torch.zeros(0, dtype=torch.int64)  # per slot

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self.capacity}, len={self._size}, storage={self.storage!r}, "
            f"prioritized={self.prioritized}, n_step={self.n_step})"
        )

    @property
    def current_beta(self) -> float:
        """The importance-sampling exponent the next :meth:`sample` call uses."""
        progress = min(1.0, self._sample_calls / self.beta_steps)
        return self.beta + progress * (self.beta_final - self.beta)

    def extend(self, batch: TensorDictBase) -> torch.Tensor:
        """Stores the transitions of a collector batch.

        Args:
            batch: batch dims ``[num_envs, T]`` (a collector batch), or ``[N]`` (already flat; only with
                ``n_step=1``). It must hold the keys of :data:`TRANSITION_KEYS`; other keys are dropped.

        Returns:
            The storage indices written, ``int64``, in the order of the flattened batch (env-major). With
            ``n_step > 1`` the transitions held back for the next call are not among them.
        """
        # The buffer's own tensors (storage, held-back windows, slot counts) are changed in place by later calls, so
        # none may be an inference tensor, even when extend runs under inference mode (the collector's batches may).
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                return self._extend(batch)
        return self._extend(batch)

    @torch.no_grad()
    def _extend(self, batch: TensorDictBase) -> torch.Tensor:
        present = set(batch.keys(include_nested=True))
        missing = [key for key in TRANSITION_KEYS if key not in present]
        if missing:
            leaves = batch.keys(include_nested=True, leaves_only=True)
            raise ValueError(
                f"The batch lacks the keys {missing} that a replay buffer stores (it has {sorted(map(str, leaves))}). "
                "Pass a collector batch (see rl_lightning.keys), or add those entries."
            )
        dims = batch.batch_dims
        if dims not in (1, 2):
            raise ValueError(
                f"batch_size={list(batch.batch_size)} is invalid: expected [num_envs, T] (a collector batch) or a "
                "flat [N]. Reshape the batch to one of these."
            )
        if dims == 1 and self.n_step > 1:
            raise ValueError(
                f"A flat batch (batch_size={list(batch.batch_size)}) has no trajectories to sum n_step={self.n_step} "
                "rewards along: pass the collector batch with batch dims [num_envs, T], or use n_step=1."
            )
        observation = _leaves_of(batch.get(keys.OBSERVATION))
        next_observation = _leaves_of(batch.get(keys.NEXT_OBSERVATION))
        self._check_leaves(observation, next_observation)
        tensors = {key: batch.get(key) for key in TRANSITION_KEYS if key not in _OBSERVATION_KEYS}
        tensors.update({_join(keys.OBSERVATION, *leaf): value for leaf, value in observation.items()})
        tensors.update({_join(*keys.NEXT_OBSERVATION, *leaf): value for leaf, value in next_observation.items()})
        raw = _on_cpu({key: value.detach() for key, value in tensors.items()})
        for key, value in raw.items():
            if value.is_floating_point() and value.dtype != self._observation_dtype and _is_observation(key):
                raw[key] = value.to(self._observation_dtype)
        if self._data:
            self._check_shapes({key: value.shape[dims:] for key, value in raw.items()})
        else:
            self._leaves = list(observation)
            row_bytes = sum(raw[_join(keys.OBSERVATION, *leaf)][(0,) * dims].nbytes for leaf in self._leaves)
            self._shared = row_bytes >= self._shared_min_bytes
            if self._shared and self._leaves == [()]:
                self._detect_frame_stack(raw[keys.OBSERVATION], raw[keys.NEXT_OBSERVATION], dims)
        first = None
        if dims == 2 and self.n_step > 1 and keys.IS_INIT in present:
            is_init = batch.get(keys.IS_INIT)
            first = is_init[:, 0].reshape(len(is_init), -1).any(-1).to("cpu", torch.bool)
        if dims == 2 and self.n_step > 1:
            self._check_envs(batch.batch_size[0], first)
        fresh = held = None
        if self._shared:
            held = self._held_slots()
            obs = {leaf: raw.pop(_join(keys.OBSERVATION, *leaf)) for leaf in self._leaves}
            nxt = {leaf: raw.pop(_join(*keys.NEXT_OBSERVATION, *leaf)) for leaf in self._leaves}
            raw[OBSERVATION_SLOT], raw[NEXT_OBSERVATION_SLOT], fresh = self._store_observations(obs, nxt, dims)
        if dims == 1 or self.n_step == 1:
            flat = {key: value.flatten(0, dims - 1) for key, value in raw.items()}
            reward = flat[keys.NEXT_REWARD]
            flat[NEXT_DISCOUNT] = torch.full(reward.shape, self.gamma, dtype=_float_dtype(reward))
        else:
            flat = self._n_step(raw, first)
        if not self._data:
            self._data = self._new_storage(
                {key: (value.shape[1:], value.dtype) for key, value in flat.items()}, self.capacity, "transitions"
            )
        index, written, overwritten = self._write(flat)
        if fresh is not None and held is not None:
            # The slots now held (new transitions, windows and tail) count once more, those let go of once less;
            # the ones nothing points at any more (and new ones nothing took) go back to the free stack.
            self._count_refs(torch.cat([written, self._held_slots()]), 1)
            released = torch.cat([overwritten, held])
            self._count_refs(released, -1)
            self._free_unreferenced(torch.cat([released, fresh]))
        return index

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TensorDict:
        """Draws ``batch_size`` transitions (with replacement).

        Args:
            batch_size: transitions to draw; at most ``len(self)``.
            generator: a CPU ``torch.Generator`` for the draws (torch's global one when ``None``).

        Returns:
            A TensorDict ``[batch_size]`` on ``device`` with the keys of :data:`STORED_KEYS` (``observation`` and
            ``("next", "observation")`` nested TensorDicts for Dict observations), ``"index"`` (:data:`INDEX`) and,
            when prioritized, ``"weight"`` (:data:`WEIGHT`).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid: expected an integer >= 1.")
        if batch_size > self._size:
            raise ValueError(
                f"Cannot sample batch_size={batch_size} transitions: the replay buffer holds {self._size}, and it "
                f"must hold at least batch_size transitions before sampling. Collect more before the first "
                "update (e.g. raise init_random_frames) or lower batch_size."
            )
        weight = None
        if self._tree is not None:
            index, weight = self._sample_prioritized(batch_size, generator)
        else:
            index = torch.randint(self._size, (batch_size,), generator=generator)
        self._sample_calls += 1
        out = self._gather(index)
        out[INDEX] = index
        if weight is not None:
            out[WEIGHT] = weight
        sample = _new_tensordict(out, batch_size=torch.Size([batch_size]))
        return sample if self.device.type == "cpu" else sample.to(self.device)

    def _gather(self, index: torch.Tensor) -> dict[str, Any]:
        """The stored transitions at ``index``: the entries of a sample (but ``"index"`` and ``"weight"``)."""
        # Index each stored tensor and build the TensorDicts once: generic TensorDict indexing costs more.
        data = self._data
        size = torch.Size([len(index)])
        if self._stack_axis is not None:
            observation = self._frame_stacks(data[OBSERVATION_SLOT].index_select(0, index))
            next_observation = self._frame_stacks(data[NEXT_OBSERVATION_SLOT].index_select(0, index))
        elif self._shared:
            obs_slot = data[OBSERVATION_SLOT].index_select(0, index)
            next_slot = data[NEXT_OBSERVATION_SLOT].index_select(0, index)
            observation = _nest({leaf: pool.index_select(0, obs_slot) for leaf, pool in self._pool.items()}, size)
            next_observation = _nest({leaf: pool.index_select(0, next_slot) for leaf, pool in self._pool.items()}, size)
        elif self._leaves == [()]:
            observation = data[keys.OBSERVATION].index_select(0, index)
            next_observation = data[keys.NEXT_OBSERVATION].index_select(0, index)
        else:
            observation = _nest(
                {leaf: data[_join(keys.OBSERVATION, *leaf)].index_select(0, index) for leaf in self._leaves}, size
            )
            next_observation = _nest(
                {leaf: data[_join(*keys.NEXT_OBSERVATION, *leaf)].index_select(0, index) for leaf in self._leaves}, size
            )
        nxt: dict[str, Any] = {keys.OBSERVATION: next_observation}
        for key in _NEXT_SCALAR_KEYS:
            nxt[key[1]] = data[key].index_select(0, index)
        return {
            keys.OBSERVATION: observation,
            keys.ACTION: data[keys.ACTION].index_select(0, index),
            keys.NEXT: _new_tensordict(nxt, batch_size=size),
        }

    def update_priority(self, index: torch.Tensor, priority: torch.Tensor) -> None:
        """Sets ``p_i = (|priority_i| + priority_eps) ** alpha`` for the storage indices ``index``.

        Does nothing when the buffer is not prioritized. When an index appears more than once, its last
        priority counts.

        Args:
            index: storage indices (the ``"index"`` of a sample), any shape.
            priority: new priorities, e.g. TD errors, with as many elements as ``index``.
        """
        if self._tree is None:
            return
        index = index.detach().reshape(-1).to("cpu", torch.int64)
        priority = priority.detach().reshape(-1).to("cpu", torch.float32)
        if index.numel() != priority.numel():
            raise ValueError(
                f"update_priority got {index.numel()} indices and {priority.numel()} priorities: expected one "
                "priority per index. Pass the sample's 'index' and a per-sample priority (e.g. |TD error|)."
            )
        if index.numel() == 0:
            return
        # At least priority_eps ** alpha, a positive float32 (checked at construction): 0 would mean an empty leaf.
        value = priority.abs().add_(self.priority_eps).pow_(self.alpha)
        # A prioritized sample's indices come sorted (stratified draws): such a batch is checked and applied in
        # one pass. Any other is refused untouched, then checked, deduplicated and applied below.
        updated, increasing, low, high, largest = self._tree.try_update(index, value, self._size)
        if not math.isfinite(largest):
            raise ValueError(
                "update_priority got NaN or infinite priorities: the TD errors diverged. Check the loss (learning "
                "rate, reward scale) before updating priorities."
            )
        if updated:
            self._max_priority = max(self._max_priority, largest)
            return
        if not increasing:
            unique, inverse = torch.unique(index, return_inverse=True)
            if len(unique) < len(index):  # the last priority of a repeated index counts
                last = torch.zeros(len(unique), dtype=torch.int64)
                last.scatter_reduce_(0, inverse, torch.arange(len(index)), reduce="amax", include_self=False)
                index, value = unique, value[last]
        if low < 0 or high >= self._size:
            raise ValueError(
                f"update_priority got indices in [{low}, {high}], but the buffer holds {self._size} transitions "
                "(indices 0 to len - 1). Pass the 'index' entry of a sample from this buffer."
            )
        self._max_priority = max(self._max_priority, largest)
        self._tree.update(index, value)

    def state_dict(self) -> dict[str, Any]:
        """The buffer's state for a checkpoint (see the class docstring); loads with ``weights_only=True``."""
        state: dict[str, Any] = {
            "capacity": self.capacity,
            "storage": self.storage,
            "prioritized": self.prioritized,
            "n_step": self.n_step,
            "gamma": self.gamma,
            "cursor": self._cursor,
            "size": self._size,
            "sample_calls": self._sample_calls,
            "max_priority": self._max_priority,
            "priority": None if self._tree is None else self._tree.leaves(self._size),
            "carry": None if self._carry is None else {_name(k): v.clone() for k, v in self._carry.items()},
            "pending": self._pending.clone(),
            "tail": None if self._tail is None else self._tail.clone(),
            "data": None,
        }
        if self._data:
            # Memmap: views of the mapped files (nothing is copied into RAM): rl_lightning's checkpoint IO writes large
            # tensors into a directory beside the .ckpt, a snapshot that later transitions do not overwrite. Memory: a
            # view saves its whole storage, so the filled part is saved as its own tensor unless that is all of it.
            data = {_name(key): self._snapshot(value, self._size) for key, value in self._data.items()}
            for leaf, pool in self._pool.items():
                data[_POOL + _name(_join(keys.OBSERVATION, *leaf))] = self._snapshot(pool, self._pool_used)
            if self._stack_axis is not None:
                data[_POOL + _FRAME_PREV] = self._snapshot(self._prev, self._pool_used)
            state["data"] = data
        state["frame_stack"] = None if self._stack_axis is None else [self._stack_axis, self._stack_size]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a state from :meth:`state_dict` of a buffer with the same capacity, storage and sampling."""
        for name in ("capacity", "storage", "prioritized", "n_step", "gamma"):
            if state[name] != getattr(self, name):
                raise ValueError(
                    f"The replay-buffer state has {name}={state[name]!r}, but this buffer has "
                    f"{name}={getattr(self, name)!r}. Build the buffer with {name}={state[name]!r} to load it."
                )
        data = state["data"] or {}
        pool = {_key(name.removeprefix(_POOL)): value for name, value in data.items() if name.startswith(_POOL)}
        prev = pool.pop(_FRAME_PREV, None)
        transitions = {_key(name): value for name, value in data.items() if not name.startswith(_POOL)}
        observations = pool or {key: value for key, value in transitions.items() if _first(key) == keys.OBSERVATION}
        saved = next((value.dtype for value in observations.values() if value.is_floating_point()), None)
        if saved is not None and saved != self._observation_dtype:
            stored = str(saved).removeprefix("torch.")
            raise ValueError(
                f"The replay-buffer state stores observations as {stored}, but this buffer has observation_dtype="
                f"{self.observation_dtype!r}. Build the buffer with observation_dtype={stored!r} (SAC: "
                f"model.init_args.observation_dtype: {stored}) to load it."
            )
        self._data, self._pool, self._shared = {}, {}, bool(pool)
        self._leaves = [_as_tuple(key)[1:] for key in observations]
        if transitions:
            spec = {key: (value.shape[1:], value.dtype) for key, value in transitions.items()}
            self._data = self._new_storage(spec, self.capacity, "transitions")
            for key, value in transitions.items():
                self._data[key][: len(value)] = value
        self._cursor = int(state["cursor"])
        self._size = int(state["size"])
        self._sample_calls = int(state["sample_calls"])
        self._max_priority = float(state["max_priority"])
        if self._tree is not None:
            self._tree.rebuild(state["priority"])
        carry = state["carry"]
        self._carry = None if carry is None else {_key(name): value.clone() for name, value in carry.items()}
        self._pending = state["pending"].clone()
        self._tail = None if state["tail"] is None else state["tail"].clone()
        self._pool_refs = torch.zeros(0, dtype=torch.int32)
        self._free, self._free_count, self._pool_used = torch.zeros(0, dtype=torch.int64), 0, 0
        self._prev = torch.zeros(0, dtype=torch.int64)
        self._stack_axis, self._stack_size = (None, 0) if state["frame_stack"] is None else state["frame_stack"]
        if pool:
            used = len(next(iter(pool.values())))
            pool_spec = {_as_tuple(key)[1:]: (value.shape[1:], value.dtype) for key, value in pool.items()}
            self._allocate_pool(pool_spec, max(used, self.capacity + self.capacity // 16))
            for key, value in pool.items():
                self._pool[_as_tuple(key)[1:]][:used] = value
            if prev is not None:
                self._prev[:used] = prev
            self._pool_used = used
            # Who points at which slot, and so which slots are free, follows from the slots the state holds.
            held = [self._data[key][: self._size].reshape(-1) for key in _SLOT_KEYS]
            self._count_refs(torch.cat([*held, self._held_slots()]), 1)
            self._free_unreferenced(torch.arange(used))

    def _check_envs(self, num_envs: int, first: torch.Tensor | None) -> None:
        """Refuses a batch whose envs cannot continue the held-back n-step windows (before anything is written)."""
        if self._carry is None or self._pending.shape[0] == num_envs or (first is not None and bool(first.all())):
            return
        raise ValueError(
            f"The batch has {num_envs} envs, but the transitions held back for n_step={self.n_step} come "
            f"from {self._pending.shape[0]}: consecutive batches must come from the same envs. Keep "
            "num_envs fixed, or mark the batch's first step is_init (as the Collector does after a reset)."
        )

    def _n_step(self, raw: dict[Key, torch.Tensor], first: torch.Tensor | None) -> dict[Key, torch.Tensor]:
        """Turns ``[num_envs, T]`` transitions, after the held-back ones, into complete n-step transitions.

        ``first`` (``[num_envs]`` bool, the batch's ``is_init`` at ``t = 0``, or ``None`` when the batch lacks it)
        says which envs start a new episode with this batch. Where the held-back transitions of such an env did not
        end their episode, the envs were reset in between (a resumed run, a new collector): their open windows end
        there, as truncated, and are never joined to the new episode.
        """
        num_envs, steps = raw[keys.NEXT_REWARD].shape[:2]
        eligible = torch.ones(num_envs, steps, dtype=torch.bool)
        closed: dict[Key, torch.Tensor] | None = None
        if self._carry is not None and first is not None:
            carried = self._pending.shape[0]
            if carried == num_envs:
                self._end_windows(first)
            elif bool(first.all()):
                # Every env was reset, into another number of envs: the held-back windows are complete on their own.
                self._end_windows(torch.ones(carried, dtype=torch.bool))
                closed = self._windows(self._carry, self._pending)
                self._carry = None
        if self._carry is not None:
            raw = {
                key: torch.cat([self._carry[key], value.to(self._carry[key].dtype)], 1) for key, value in raw.items()
            }
            eligible = torch.cat([self._pending, eligible], 1)
        out = self._windows(raw, eligible)
        if closed is not None:
            out = {key: torch.cat([closed[key], value.to(closed[key].dtype)]) for key, value in out.items()}
        return out

    def _end_windows(self, envs: torch.Tensor) -> None:
        """Ends the episodes of the held-back transitions of ``envs`` (``[num_envs]`` bool) at their last step, as
        truncated (their values bootstrap from that step's next observation), unless they ended there already."""
        assert self._carry is not None
        open_ = envs & ~self._carry[keys.NEXT_DONE][:, -1].reshape(len(envs), -1).any(-1)
        if bool(open_.any()):
            for key in (keys.NEXT_TRUNCATED, keys.NEXT_DONE):
                self._carry[key][open_, -1] = True

    def _windows(self, raw: dict[Key, torch.Tensor], eligible: torch.Tensor) -> dict[Key, torch.Tensor]:
        """The complete n-step transitions of ``[num_envs, L]`` trajectories whose ``eligible`` steps are not stored
        yet; holds back the last ``n_step - 1`` steps of each env (and which of them are still to be stored)."""
        num_envs, length = eligible.shape
        reward = raw[keys.NEXT_REWARD]
        done = raw[keys.NEXT_DONE].reshape(num_envs, length, -1).any(-1)
        # Each reward entry (usually one, [..., 1]) is its own row of the n-step sum.
        per_entry = reward.reshape(num_envs, length, -1).movedim(-1, 0)
        entries = per_entry.shape[0]
        returns, used, complete = n_step_returns(
            per_entry.reshape(-1, length), done.repeat(entries, 1), self.n_step, self.gamma
        )
        returns = returns.reshape(entries, num_envs, length).movedim(0, -1)
        used, complete = used[:num_envs], complete[:num_envs]
        emit = eligible & complete
        held = min(self.n_step - 1, length)
        self._carry = {key: value[:, length - held :].clone() for key, value in raw.items()}
        self._pending = (eligible & ~complete)[:, length - held :].clone()

        env, t = emit.nonzero(as_tuple=True)
        last = t + used[env, t] - 1
        # The observation and action of the window's first step; the next observation and flags of its last one.
        out = {key: value[env, last] if _first(key) == keys.NEXT else value[env, t] for key, value in raw.items()}
        out[keys.NEXT_REWARD] = returns[env, t].reshape(-1, *reward.shape[2:])
        discount = torch.full(used.shape, self.gamma, dtype=torch.float64).pow(used)[env, t]
        out[NEXT_DISCOUNT] = (
            discount.to(_float_dtype(reward)).reshape(-1, *[1] * (reward.dim() - 2)).expand(-1, *reward.shape[2:])
        )
        return out

    def _store_observations(
        self, obs: dict[tuple[str, ...], torch.Tensor], nxt: dict[tuple[str, ...], torch.Tensor], dims: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Writes a batch's observations into free pool slots, one slot for each next observation and one for each
        observation that is not, bit for bit, the next observation before it (in its env's row: the final
        observation of the step before, or the previous batch's last one: the tail). Makes the batch's last next
        observations the new tail.

        Returns:
            The slots of the observations and of the next observations (the batch dims), and all slots taken.
        """
        if self._stack_axis is not None:
            return self._store_frames(obs[()], nxt[()], dims)
        if dims == 1:  # a flat batch: one row, with no tail (its env is unknown)
            obs = {leaf: value.unsqueeze(0) for leaf, value in obs.items()}
            nxt = {leaf: value.unsqueeze(0) for leaf, value in nxt.items()}
        num_envs, steps = obs[self._leaves[0]].shape[:2]
        rows = num_envs * steps
        if not self._pool:
            # Room for the live transitions, the new batch before the overwritten ones let go, and some episode ends.
            self._allocate_pool(
                {leaf: (value.shape[2:], value.dtype) for leaf, value in obs.items()},
                self.capacity + self.capacity // 16 + 2 * rows + 2 * num_envs * self.n_step,
            )
        same = torch.ones(num_envs, steps - 1, dtype=torch.bool)
        from_tail = torch.zeros(num_envs, dtype=torch.bool)
        tail, self._tail = self._tail, None
        if dims == 2 and tail is not None and len(tail) == num_envs:
            from_tail = ~from_tail
        for leaf in self._leaves:
            same &= _same_rows(nxt[leaf][:, :-1], obs[leaf][:, 1:], dims=2)
            if tail is not None and bool(from_tail.any()):
                from_tail &= _same_rows(self._pool[leaf].index_select(0, tail), obs[leaf][:, 0], dims=1)
        new = torch.cat([~from_tail.unsqueeze(1), ~same], 1)
        count = int(new.sum())
        slots = self._take_slots(count + rows)
        next_slot = slots[count:].view(num_envs, steps)
        obs_slot = torch.empty(num_envs, steps, dtype=torch.int64)
        obs_slot[new] = slots[:count]
        obs_slot[:, 1:][same] = next_slot[:, :-1][same]
        if tail is not None and bool(from_tail.any()):
            obs_slot[:, 0][from_tail] = tail[from_tail]
        for leaf, pool in self._pool.items():
            pool.index_copy_(0, slots[:count], obs[leaf][new].to(pool.dtype))
            pool.index_copy_(0, next_slot.view(-1), nxt[leaf].reshape(rows, *pool.shape[1:]).to(pool.dtype))
        if dims == 2:
            self._tail = next_slot[:, -1].clone()
            return obs_slot, next_slot, slots
        return obs_slot.view(-1), next_slot.view(-1), slots

    def _detect_frame_stack(self, obs: torch.Tensor, nxt: torch.Tensor, dims: int) -> None:
        """Stores single frames when the first batch's observations are frame stacks along their first or last axis
        (FrameStackObservation's, or stacked channels last): every next observation's first k - 1 frames are its
        observation's last k - 1, bit for bit. Only the layout follows from this: each later observation is checked
        again before it is stored as one frame (see :meth:`_store_frames`)."""
        shape = obs.shape[dims:]
        if len(shape) < 3 or obs.numel() == 0:  # a stack of images
            return
        for axis in (0, len(shape) - 1):
            k = shape[axis]
            later = obs.narrow(dims + axis, 1, k - 1)
            if k > 1 and bool(_same_rows(nxt.narrow(dims + axis, 0, k - 1), later, dims).all()):
                self._stack_axis, self._stack_size = axis, k
                return

    def _store_frames(
        self, obs: torch.Tensor, nxt: torch.Tensor, dims: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_store_observations` for frame stacks. Observations and next observations are shared as there, and
        each remaining next observation whose first k - 1 frames are its observation's last k - 1 (checked bit for
        bit) takes one slot: its newest frame, pointing at the observation's slot. Any other observation (a reset's,
        the first of the buffer, a stack that does not slide) takes a chain of k slots, one per frame."""
        if dims == 1:
            obs, nxt = obs.unsqueeze(0), nxt.unsqueeze(0)
        k, axis = self._stack_size, cast(int, self._stack_axis)
        num_envs, steps = obs.shape[:2]
        rows = num_envs * steps
        obs_frames, next_frames = obs.movedim(2 + axis, 2), nxt.movedim(2 + axis, 2)  # [E, T, k, *frame]
        if not self._pool:
            self._allocate_pool(
                {(): (obs_frames.shape[3:], obs.dtype)},
                self.capacity + self.capacity // 16 + 2 * k * rows + 2 * num_envs * self.n_step,
            )
        same = _same_rows(nxt[:, :-1], obs[:, 1:], dims=2)
        from_tail = torch.zeros(num_envs, dtype=torch.bool)
        tail, self._tail = self._tail, None
        if dims == 2 and tail is not None and len(tail) == num_envs:
            from_tail = _same_rows(self._stacks(tail), obs_frames[:, 0], dims=1)
        new = torch.cat([~from_tail.unsqueeze(1), ~same], 1)
        slides = _same_rows(next_frames[:, :, : k - 1], obs_frames[:, :, 1:], dims=2)
        new_count, slide_count = int(new.sum()), int(slides.sum())
        slots = self._take_slots(k * new_count + slide_count + k * (rows - slide_count))
        obs_chains = slots[: k * new_count].view(new_count, k)
        singles = slots[k * new_count : k * new_count + slide_count]
        next_chains = slots[k * new_count + slide_count :].view(rows - slide_count, k)
        next_slot = torch.empty(num_envs, steps, dtype=torch.int64)
        next_slot[slides] = singles
        next_slot[~slides] = next_chains[:, -1]
        obs_slot = torch.empty(num_envs, steps, dtype=torch.int64)
        obs_slot[new] = obs_chains[:, -1]
        obs_slot[:, 1:][same] = next_slot[:, :-1][same]
        if tail is not None and bool(from_tail.any()):
            obs_slot[:, 0][from_tail] = tail[from_tail]
        frames, prev = self._pool[()], self._prev
        for chains, stacks in ((obs_chains, obs_frames[new]), (next_chains, next_frames[~slides])):
            frames.index_copy_(0, chains.reshape(-1), stacks.reshape(-1, *frames.shape[1:]).to(frames.dtype))
            # A chain's first frame points at itself: no stack reaches further back than k - 1 slots.
            prev.index_copy_(0, chains.reshape(-1), torch.cat([chains[:, :1], chains[:, :-1]], 1).reshape(-1))
        frames.index_copy_(0, singles, next_frames[slides][:, -1].to(frames.dtype))
        prev.index_copy_(0, singles, obs_slot[slides])
        if dims == 2:
            self._tail = next_slot[:, -1].clone()
            return obs_slot, next_slot, slots
        return obs_slot.view(-1), next_slot.view(-1), slots

    def _ancestry(self, slots: torch.Tensor) -> torch.Tensor:
        """``slots`` and, with frame stacks, the k - 1 slots before each (whose frames its stack holds)."""
        if self._stack_axis is None:
            return slots
        chain = [slots]
        for _ in range(self._stack_size - 1):
            chain.append(self._prev.index_select(0, chain[-1]))
        return torch.cat(chain)

    def _stacks(self, slots: torch.Tensor) -> torch.Tensor:
        """The frame stacks of ``slots``, ``[len(slots), k, *frame]``, the oldest frame first."""
        chain = [slots]
        for _ in range(self._stack_size - 1):
            chain.append(self._prev.index_select(0, chain[-1]))
        order = torch.stack(chain[::-1], 1).view(-1)
        frames = self._pool[()]
        return frames.index_select(0, order).view(len(slots), self._stack_size, *frames.shape[1:])

    def _frame_stacks(self, slots: torch.Tensor) -> torch.Tensor:
        """The observations of ``slots``, their frames stacked along the stack's axis (as they were collected)."""
        stacks = self._stacks(slots)
        return stacks if self._stack_axis == 0 else stacks.movedim(1, 1 + cast(int, self._stack_axis)).contiguous()

    def _held_slots(self) -> torch.Tensor:
        """The slots the held-back n-step windows and the tail point at (each once per pointer)."""
        held = [] if self._tail is None else [self._tail]
        if self._carry is not None and self._shared:
            held += [self._carry[key].reshape(-1) for key in _SLOT_KEYS]
        return torch.cat(held) if held else _NO_SLOTS

    def _count_refs(self, slots: torch.Tensor, delta: int) -> None:
        """Adds ``delta`` to the counts of ``slots`` (and, with frame stacks, of the frames their stacks hold)."""
        slots = self._ancestry(slots)
        if len(slots):
            self._pool_refs.index_add_(0, slots, torch.full((len(slots),), delta, dtype=torch.int32))

    def _free_unreferenced(self, candidates: torch.Tensor) -> None:
        """Pushes the ``candidates`` (slots not on the free stack) that nothing points at onto the free stack."""
        candidates = torch.unique(self._ancestry(candidates))
        free = candidates[self._pool_refs.index_select(0, candidates) == 0]
        self._free[self._free_count : self._free_count + len(free)] = free
        self._free_count += len(free)

    def _take_slots(self, count: int) -> torch.Tensor:
        """``count`` slots nothing points at: the most recently freed first, then slots never used (the pool grows
        when it has too few)."""
        reused = min(count, self._free_count)
        taken = self._free[self._free_count - reused : self._free_count].clone()
        self._free_count -= reused
        more = count - reused
        if self._pool_used + more > len(self._pool_refs):
            size = max(self._pool_used + more, len(self._pool_refs) * 5 // 4)
            old = self._pool
            self._allocate_pool({leaf: (value.shape[1:], value.dtype) for leaf, value in old.items()}, size)
            for leaf, value in old.items():
                self._pool[leaf][: self._pool_used] = value[: self._pool_used]
        fresh = torch.arange(self._pool_used, self._pool_used + more)
        self._pool_used += more
        return torch.cat([taken, fresh])

    def _allocate_pool(self, spec: Mapping[tuple[str, ...], tuple[torch.Size, torch.dtype]], size: int) -> None:
        """(Re)allocates the pool with ``size`` slots, keeping the counts and the free stack of the slots it had."""
        names = {_join(keys.OBSERVATION, *leaf): leaf for leaf in spec}
        pool = self._new_storage({key: spec[leaf] for key, leaf in names.items()}, size, f"observations-{size}")
        old_dir = self._pool_dir
        self._pool = {leaf: pool[key] for key, leaf in names.items()}
        self._pool_dir = f"observations-{size}"
        refs = torch.zeros(size, dtype=torch.int32)
        refs[: len(self._pool_refs)] = self._pool_refs
        free = torch.zeros(size, dtype=torch.int64)
        free[: self._free_count] = self._free[: self._free_count]
        self._pool_refs, self._free = refs, free
        if self._stack_axis is not None:
            prev = self._new_storage({_FRAME_PREV: (torch.Size([]), torch.int64)}, size, f"observations-{size}")[
                _FRAME_PREV
            ]
            prev[: len(self._prev)] = self._prev
            self._prev = prev
        if old_dir is not None and old_dir != self._pool_dir and self.scratch_dir is not None:
            shutil.rmtree(Path(self.scratch_dir) / old_dir, ignore_errors=True)  # still mapped until released

    def _new_storage(
        self, spec: Mapping[Key, tuple[torch.Size, torch.dtype]], rows: int, folder: str
    ) -> dict[Key, torch.Tensor]:
        """One ``[rows, ...]`` tensor per key, in RAM or memory-mapped in ``scratch_dir/folder``. Neither takes
        memory (nor disk) before its rows are written."""
        with torch.inference_mode(False):  # extend() may run under inference mode; the storage must not
            if self.storage == "memory":
                return {key: torch.empty(rows, *shape, dtype=dtype) for key, (shape, dtype) in spec.items()}
            assert self.scratch_dir is not None
            directory = Path(self.scratch_dir) / folder
            directory.mkdir(parents=True, exist_ok=True)
            storage = {}
            for key, (shape, dtype) in spec.items():
                file = directory / f"{_name(key)}.memmap"
                # A file of an earlier buffer (another run, or this one before load_state_dict) is unlinked, not
                # overwritten: whatever still maps it (the state being loaded) keeps reading its contents.
                file.unlink(missing_ok=True)
                memmap = MemoryMappedTensor.empty((rows, *shape), dtype=dtype, filename=str(file))
                storage[key] = memmap.as_subclass(torch.Tensor)  # a plain view: indexing skips the subclass's dispatch
            return storage

    def _snapshot(self, value: torch.Tensor, rows: int) -> torch.Tensor:
        if self.storage == "memmap" or rows == len(value):
            return value[:rows]
        return value[:rows].clone()

    def _check_leaves(
        self, observation: Mapping[tuple[str, ...], torch.Tensor], next_observation: Mapping[tuple[str, ...], Any]
    ) -> None:
        if set(observation) != set(next_observation):
            raise ValueError(
                f"The batch's observation has the entries {_leaf_names(observation)}, but its ('next', 'observation') "
                f"has {_leaf_names(next_observation)}: both must have the keys of the observation space."
            )
        if self._data and set(observation) != set(self._leaves):
            raise ValueError(
                f"The batch's observation has the entries {_leaf_names(observation)}, but the buffer stores "
                f"{_leaf_names(self._leaves)} (from its first batch). Extend a buffer with the data of one env only."
            )
        dotted = [leaf for leaf in observation if any("." in part for part in leaf)]
        if dotted:
            raise ValueError(
                f"The observation's Dict keys {_leaf_names(dotted)} contain '.', which the replay buffer's checkpoints "
                "use to join nested keys. Rename them (e.g. with a gymnasium TransformObservation wrapper)."
            )

    def _check_shapes(self, shapes: Mapping[Key, torch.Size]) -> None:
        for key, shape in shapes.items():
            if key in self._data:
                stored = self._data[key].shape[1:]
            else:  # an observation leaf kept in the pool
                stored = self._pool[_as_tuple(key)[2 if _first(key) == keys.NEXT else 1 :]].shape[1:]
                if self._stack_axis is not None:  # the pool holds single frames
                    stored = torch.Size([*stored[: self._stack_axis], self._stack_size, *stored[self._stack_axis :]])
            if shape != stored:
                raise ValueError(
                    f"The batch's {key!r} has per-transition shape {list(shape)}, but the buffer stores {list(stored)} "
                    "(from its first batch). Extend a buffer with the data of one env only."
                )

    def _write(self, flat: Mapping[Key, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Writes the transitions at the cursor. Returns their indices, and the observation slots of the transitions
        written and of those they overwrote (empty unless the observations are in the pool)."""
        count = len(flat[keys.NEXT_REWARD])
        if count > self.capacity:  # the first ones would be overwritten by the last ones of the same batch
            flat = {key: value[count - self.capacity :] for key, value in flat.items()}
            count = self.capacity
        start = self._cursor
        index = torch.arange(start, start + count) % self.capacity
        written = overwritten = _NO_SLOTS
        if self._shared:
            old = index if self._size == self.capacity else index[index < self._size]
            overwritten = torch.cat([self._data[key].index_select(0, old) for key in _SLOT_KEYS])
            written = torch.cat([flat[key] for key in _SLOT_KEYS])
        first = min(count, self.capacity - start)  # written before the ring wraps
        for key, value in flat.items():
            stored = self._data[key]
            stored[start : start + first] = value[:first]
            if first < count:
                stored[: count - first] = value[first:]
        self._cursor = (start + count) % self.capacity
        self._size = min(self._size + count, self.capacity)
        if self._tree is not None and count:
            self._tree.update(index, torch.full((count,), self._max_priority, dtype=torch.float32))
        return index, written, overwritten

    def _sample_prioritized(
        self, batch_size: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tree = self._tree
        assert tree is not None
        # Stratified: one uniform draw in each of batch_size equal segments of the total mass.
        uniform = torch.rand(batch_size, dtype=torch.float64, generator=generator)
        index, relative = tree.sample(uniform, limit=self._size)  # relative: p_i / min_j p_j
        # w_i / max_j w_j = (N P(i))^-beta / (N min_j P(j))^-beta = (p_i / min_j p_j)^-beta
        weight = torch.empty(batch_size, 1, dtype=torch.float32)
        torch.pow(relative, -self.current_beta, out=weight.view(-1))
        return index, weight


def _prepare_scratch_dir(scratch_dir: str | os.PathLike[str]) -> None:
    """Creates the directory and writes a probe file, so that a bad path fails at construction."""
    try:
        Path(scratch_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=scratch_dir, prefix=".probe-"):
            pass
    except OSError as err:
        raise ValueError(
            f"scratch_dir={str(scratch_dir)!r} is not a writable directory ({err}). Pass a directory this process "
            "can create and write, with room for the buffer, or use storage='memory'."
        ) from err


def _float_dtype(value: torch.Tensor) -> torch.dtype:
    return value.dtype if value.is_floating_point() else torch.get_default_dtype()


def _name(key: Key) -> str:
    return key if isinstance(key, str) else ".".join(key)


def _key(name: str) -> Key:
    parts = name.split(".")
    return tuple(parts) if len(parts) > 1 else name


def _on_cpu(tensors: dict[Key, torch.Tensor]) -> dict[Key, torch.Tensor]:
    """The tensors on the CPU. From a GPU: all copies queued, then one wait for them, instead of one per tensor."""
    on_gpu = [value.device for value in tensors.values() if value.is_cuda]
    moved = {key: value.to("cpu", non_blocking=True) for key, value in tensors.items()}
    for device in set(on_gpu):
        torch.cuda.current_stream(device).synchronize()
    return moved


def _first(key: Key) -> str:
    return key if isinstance(key, str) else key[0]


def _as_tuple(key: Key) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else key


def _join(*parts: str) -> Key:
    """A key from its parts: a string for one part, a tuple for more (tensordict's convention)."""
    return parts[0] if len(parts) == 1 else parts


def _is_observation(key: Key) -> bool:
    return _first(key) == keys.OBSERVATION or _as_tuple(key)[:2] == keys.NEXT_OBSERVATION


def _leaves_of(value: torch.Tensor | TensorDictBase) -> dict[tuple[str, ...], torch.Tensor]:
    """The leaves of an observation by their nested key: ``{(): value}`` for a tensor."""
    if not isinstance(value, TensorDictBase):
        return {(): value}
    leaves = {
        _as_tuple(key): cast(torch.Tensor, leaf) for key, leaf in value.items(include_nested=True, leaves_only=True)
    }
    if not leaves:
        raise ValueError(
            "The batch's observation is a TensorDict without entries: a Dict observation space needs at least one key."
        )
    return leaves


def _leaf_names(leaves: Iterable[tuple[str, ...]]) -> list[str]:
    return sorted(".".join(leaf) if leaf else "<tensor>" for leaf in leaves)


def _nest(leaves: Mapping[tuple[str, ...], torch.Tensor], batch_size: torch.Size) -> torch.Tensor | TensorDict:
    """The observation of its leaves: the tensor itself, or nested TensorDicts ``batch_size``."""
    if () in leaves:
        return leaves[()]
    tree: dict[str, Any] = {}
    for leaf, value in leaves.items():
        node = tree
        for part in leaf[:-1]:
            node = node.setdefault(part, {})
        node[leaf[-1]] = value

    def build(node: dict[str, Any]) -> TensorDict:
        entries = {name: build(entry) if isinstance(entry, dict) else entry for name, entry in node.items()}
        return _new_tensordict(entries, batch_size=batch_size)

    return build(tree)


def _same_rows(a: torch.Tensor, b: torch.Tensor, dims: int) -> torch.Tensor:
    """Whether ``a`` and ``b`` (same shape) hold the same bits in each row of their first ``dims`` dims (bool)."""
    width = math.prod(a.shape[dims:])
    a, b = a.reshape(*a.shape[:dims], width), b.reshape(*b.shape[:dims], width)
    if a.is_floating_point() or a.dtype == torch.bool:  # bits, not values: NaN equals itself, -0.0 differs from 0.0
        as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.view(as_int), b.view(as_int)
    if a.element_size() < 8 and all(_wide_view(x) for x in (a, b)):  # 8 bytes a compare (uint8 images)
        a, b = a.view(torch.int64), b.view(torch.int64)
    return (a == b).all(-1)


def _wide_view(x: torch.Tensor) -> bool:
    """Whether ``x`` can be viewed as int64 (its rows contiguous and 8-byte aligned)."""
    ratio = 8 // x.element_size()
    return (
        x.stride(-1) == 1
        and x.shape[-1] % ratio == 0
        and all(stride % ratio == 0 for stride in x.stride()[:-1])
        and x.storage_offset() % ratio == 0
    )
