"""EnvPool as a gymnasium vector env with same-step autoreset, the contract the
:class:`~rl_lightning.collector.Collector` relies on.

`EnvPool <https://github.com/sail-sg/envpool>`_ steps a batch of envs in a C++ thread pool. It autoresets on the
*next* step (the step after an episode ends ignores its action and returns the reset observation); the collector
needs gymnasium's ``AutoresetMode.SAME_STEP``, where the step that ends an episode already returns the reset
observation and keeps the final one in ``info["final_obs"]``. :class:`EnvPoolVecEnv` converts: after a step in which
some envs ended, it steps only those envs once more (EnvPool's ``env_id`` subsets), which is EnvPool's own autoreset,
and returns their reset observations in place of the final ones. An extra call happens only on steps where an
episode ends, and going through EnvPool's own reset keeps its semantics (with ``episodic_life=True`` a lost life
continues the game, a lost game starts a new one; an explicit ``reset(env_id)`` would restart the game every time).

Env ids are the gymnasium ids users write: ``"CartPole-v1"``, ``"Pendulum-v1"``, ``"HalfCheetah-v4"`` are EnvPool
tasks of the same name; ``"ALE/Pong-v5"`` is EnvPool's ``"Pong-v5"``. EnvPool's own task ids work too.

**Atari.** EnvPool's Atari tasks do their preprocessing in C++, and their defaults differ from gymnasium's
``ALE/<Game>-v5``:

=================================  ====================================  ============================================
                                   EnvPool ``Pong-v5`` (defaults)        gymnasium ``ALE/Pong-v5``
=================================  ====================================  ============================================
observation                        ``[4, 84, 84]`` uint8: grayscale,     ``[210, 160, 3]`` uint8 RGB frames;
                                   84x84 (area resize), max of the last  ``AtariPreprocessing(frame_skip=4,
                                   two frames, 4 stacked, channels       screen_size=84)`` +
                                   first                                 ``FrameStackObservation(4)`` on
                                                                         ``frameskip=1`` give ``[4, 84, 84]``
frame skip                         4 (``frame_skip``)                    4 in the env (``frameskip``), or the wrapper's
sticky actions                     none (``repeat_action_probability``   0.25 (``repeat_action_probability``)
                                   0.0)
no-op starts                       up to 30 (``noop_max``)               up to 30 (``AtariPreprocessing(noop_max)``)
FIRE on reset                      yes (``use_fire_reset``)              no
episodic life                      off (``episodic_life``)               off (``terminal_on_life_loss``)
reward clipping                    off (``reward_clip``)                 none (``gymnasium.wrappers.ClipReward``)
episode limit                      27,000 steps = 108,000 frames,        108,000 frames (``max_num_frames_per_
                                   reported as truncation                episode``), reported as truncation
=================================  ====================================  ============================================

Pass EnvPool's options as ``env_kwargs`` (e.g. ``{"repeat_action_probability": 0.25, "use_fire_reset": False}`` to
come closer to gymnasium's). ``episodic_life`` and ``reward_clip`` are options of the EnvPool env, not wrappers, so
one env cannot have them for training and not for evaluation: build the evaluation envs with
:func:`evaluation_env_kwargs`, which turns the training-only options off, so that evaluation reports raw returns
of whole games. With ``episodic_life=True`` a lost life is a termination (values do not bootstrap across it); the
training statistics of whole games on raw rewards are in ``info["final_info"]["episode"]`` (see
:class:`EnvPoolVecEnv`), which ``Collector(episodes_from_info=True)`` logs instead of the sum of each life's
clipped rewards.

Example:
    >>> envs = make_envpool_vec_env("CartPole-v1", num_envs=2, seed=0)  # doctest: +SKIP
    >>> obs, info = envs.reset(seed=0)  # doctest: +SKIP
    >>> obs.shape  # doctest: +SKIP
    (2, 4)
    >>> envs.close()  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

EXTRA_HINT = "pip install rl-lightning[envpool]"
"""How to install EnvPool, named by the error raised when it is missing."""

EPISODE_STATISTICS_KEY = "episode"
"""The ``info["final_info"]`` entry with the return and length of each whole game (gymnasium's
``RecordEpisodeStatistics`` format: ``{"r": returns, "l": lengths}``, ``"_episode"`` marks the envs whose game ended),
what ``Collector(episodes_from_info=True)`` reads."""

TRAINING_ONLY_OPTIONS = {"episodic_life": False, "reward_clip": False, "zero_discount_on_life_loss": False}
"""EnvPool Atari options that only training uses, and their values for evaluation (:func:`evaluation_env_kwargs`)."""

_RESERVED = {
    "num_envs": "it is the num_envs argument (data.num_envs)",
    "seed": "it is the seed argument (data.seed); env i is seeded seed + i",
    "env_type": "the adapter always uses EnvPool's gymnasium API",
    "batch_size": "EnvPool's asynchronous mode returns a different subset of envs at each step, which the batch "
    "contract ([num_envs, T]) cannot hold",
    "render_mode": "EnvPool envs are not rendered here (render_mode is None)",
    "gym_reset_return_info": "the adapter needs reset infos",
}


def _import_envpool() -> Any:
    try:
        import envpool
    except ImportError as err:
        raise ImportError(
            f"vectorization='envpool' needs the envpool package, which is not importable here ({err}). Install it "
            f"with `{EXTRA_HINT}`, or use vectorization='sync' or 'async'."
        ) from err
    return envpool


def envpool_task_id(env_id: str) -> str:
    """The EnvPool task id for a gymnasium env id: ``"ALE/<Game>-v5"`` is ``"<Game>-v5"``, other ids (classic
    control, Box2D, MuJoCo) are EnvPool's own.

    Raises:
        ImportError: when envpool is not installed.
        ValueError: for an id EnvPool does not provide, naming the closest EnvPool tasks.

    Example:
        >>> envpool_task_id("ALE/Pong-v5")  # doctest: +SKIP
        'Pong-v5'
    """
    envpool = _import_envpool()
    tasks = envpool.list_all_envs()
    task = env_id.removeprefix("ALE/")
    if task in tasks:
        return task
    close = difflib.get_close_matches(task, tasks, n=5, cutoff=0.6)
    suggestion = f" Closest EnvPool tasks: {close}." if close else ""
    raise ValueError(
        f"Env id {env_id!r} is not an EnvPool task.{suggestion} EnvPool provides the ids of "
        "envpool.list_all_envs() (e.g. 'CartPole-v1', 'Pendulum-v1', 'HalfCheetah-v4', and Atari as 'Pong-v5' or "
        "gymnasium's 'ALE/Pong-v5'); for other envs use vectorization='sync' or 'async'."
    )


def evaluation_env_kwargs(env_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``env_kwargs`` for evaluation envs: the training-only options it sets (:data:`TRAINING_ONLY_OPTIONS`:
    ``episodic_life``, ``reward_clip``, ``zero_discount_on_life_loss``) turned off, so that evaluation scores whole
    games on raw rewards. Options it does not set stay unset (EnvPool's defaults are off, and non-Atari tasks do not
    take them).

    Example:
        >>> evaluation_env_kwargs({"episodic_life": True, "reward_clip": True, "noop_max": 30})
        {'episodic_life': False, 'reward_clip': False, 'noop_max': 30}
    """
    kwargs = dict(env_kwargs or {})
    for key, value in TRAINING_ONLY_OPTIONS.items():
        if key in kwargs:
            kwargs[key] = value
    return kwargs


def _take(obs: Any, ids: np.ndarray) -> Any:
    """The rows ``ids`` of a batch of observations (an array, or a dict of them for Dict spaces), copied."""
    if isinstance(obs, dict):
        return {key: _take(value, ids) for key, value in obs.items()}
    return obs[ids]


def _put(obs: Any, ids: np.ndarray, rows: Any) -> None:
    """Writes ``rows`` into the rows ``ids`` of a batch of observations, in place."""
    if isinstance(obs, dict):
        for key, value in obs.items():
            _put(value, ids, rows[key])
    else:
        obs[ids] = rows


def _row(obs: Any, i: int) -> Any:
    """Observation ``i`` of a batch of observations."""
    if isinstance(obs, dict):
        return {key: _row(value, i) for key, value in obs.items()}
    return obs[i]


def _public_info(info: dict[str, Any]) -> dict[str, Any]:
    """EnvPool's info without its bookkeeping (``env_id``, ``players``)."""
    return {key: value for key, value in info.items() if key not in ("env_id", "players")}


class EnvPoolVecEnv(gym.vector.VectorEnv):
    """An EnvPool env as a gymnasium vector env with ``AutoresetMode.SAME_STEP``.

    ``step`` returns the reset observation of each env whose episode ended and keeps the true final one in
    ``info["final_obs"][i]`` (``info["_final_obs"]`` marks them); terminations and truncations (EnvPool's
    ``max_episode_steps``) are kept apart. The other ``info`` entries are EnvPool's for the step taken (for an env
    that ended, its last step, e.g. ``elapsed_step`` is the episode length).

    On steps where an episode ended, ``info["final_info"]["episode"]`` holds the return and length (in steps) of
    each env's whole game, in the format of gymnasium's ``RecordEpisodeStatistics``, and ``"_episode"`` marks the
    envs whose game ended there. For Atari a game ends at game over or truncation, not at a life lost under
    ``episodic_life``, and its return sums EnvPool's ``info["reward"]``, the reward before ``reward_clip``; for
    other tasks a game is an episode. ``Collector(episodes_from_info=True)`` logs these instead of the training
    rewards' sums.

    **Seeds.** EnvPool seeds its envs when it builds them, so ``reset(seed=s)`` builds the pool again with env ``i``
    seeded ``s + i`` (EnvPool's per-env seeds), except right after construction with the same seed:
    ``reset(seed=s)`` always starts the same episodes. ``reset()`` without a seed resets every env and continues
    its random stream. ``seed=None`` at construction draws a seed from fresh entropy. EnvPool's seeds are int32:
    a seed from ``2**31 - num_envs`` up is reduced modulo ``2**31 - num_envs + 1``.

    Args:
        env_id: a gymnasium env id EnvPool provides (see :func:`envpool_task_id`).
        num_envs: envs stepped together.
        seed: env ``i`` is seeded ``seed + i``.
        env_kwargs: EnvPool's options for the task (``envpool.make(task_id, **env_kwargs)``), e.g.
            ``{"num_threads": 2}``, ``{"max_episode_steps": 100}``, Atari's ``{"episodic_life": True}``.

    Raises:
        ImportError: when envpool is not installed.
        ValueError: for an id EnvPool does not provide, ``num_envs < 1``, or an ``env_kwargs`` key the adapter sets
            itself or cannot support.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self, env_id: str, num_envs: int, seed: int | None = None, env_kwargs: dict[str, Any] | None = None
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"EnvPoolVecEnv needs num_envs >= 1, got {num_envs}.")
        kwargs = dict(env_kwargs or {})
        for key, why in _RESERVED.items():
            if key in kwargs:
                raise ValueError(f"env_kwargs sets {key}={kwargs[key]!r}, which the EnvPool adapter refuses: {why}.")
        self._envpool = _import_envpool()
        self.env_id = env_id
        self.task_id = envpool_task_id(env_id)
        self.env_kwargs = kwargs
        self.num_envs = num_envs
        self.render_mode = None
        self._ids = np.arange(num_envs, dtype=np.int32)
        self._game_return = np.zeros(num_envs, dtype=np.float64)
        self._game_length = np.zeros(num_envs, dtype=np.int64)
        self._pool: Any = None
        self._seed = self._draw_seed() if seed is None else self._int32_seed(seed)
        self._fresh = False  # whether the pool was built with self._seed and has not been reset or stepped since
        pool = self._build()
        with warnings.catch_warnings():
            # EnvPool builds float32 Boxes from float64 bounds, and gymnasium warns of the cast every time.
            warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32", category=UserWarning)
            self.single_observation_space = pool.observation_space
            self.single_action_space = pool.action_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)

    def _draw_seed(self) -> int:
        return self._int32_seed(int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0]))

    def _int32_seed(self, seed: int) -> int:
        """``seed`` where ``seed + i`` fits EnvPool's int32 seeds for every env: itself below ``2**31 - num_envs``,
        else reduced modulo ``2**31 - num_envs + 1`` (gymnasium takes any seed >= 0, e.g. the uint32 seeds a resumed
        run reseeds its envs with)."""
        if seed < 0:
            raise ValueError(f"seed={seed} is negative; seeds are integers >= 0 (as gymnasium's), or None.")
        return int(seed) % (2**31 - self.num_envs + 1)

    def _build(self) -> Any:
        """(Re)builds the pool with env ``i`` seeded ``self._seed + i``; returns it."""
        if self._pool is not None:
            self._pool.close()
        self._pool = self._envpool.make(
            self.task_id, env_type="gymnasium", num_envs=self.num_envs, seed=self._seed, **self.env_kwargs
        )
        self._fresh = True
        return self._pool

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Resets every env; with ``seed``, env ``i`` starts from seed ``seed + i`` (see the class docstring)."""
        if options is not None:
            raise ValueError(
                f"EnvPoolVecEnv.reset takes no options, got {options!r}; reset all envs with options=None."
            )
        if seed is not None:
            seed = self._int32_seed(seed)
            if not (self._fresh and seed == self._seed):
                self._seed = seed
                self._build()
        self._fresh = False
        self._game_return[:] = 0.0
        self._game_length[:] = 0
        obs, info = self._pool.reset()
        return obs, _public_info(info)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Steps every env; see the class docstring for what an env whose episode ended returns."""
        self._fresh = False
        actions = np.asarray(actions)
        obs, reward, terminated, truncated, info = self._pool.step(actions)
        if not np.array_equal(info["env_id"], self._ids):  # EnvPool's sync mode answers in env order; check it
            raise RuntimeError(
                f"EnvPool returned envs {info['env_id'].tolist()} for a step of all {self.num_envs} envs; expected "
                "them in order. This adapter needs EnvPool's synchronous mode (no batch_size in env_kwargs)."
            )
        info = _public_info(info)
        done = terminated | truncated
        if "lives" in info:  # Atari: a game ends at game over, and info["reward"] is the reward before reward_clip
            self._game_return += info["reward"]
            game_over = info["terminated"].astype(bool) | truncated
        else:
            self._game_return += reward
            game_over = done
        self._game_length += 1
        if done.any():
            ended = np.flatnonzero(done).astype(np.int32)
            final = _take(obs, ended)
            # EnvPool's next-step autoreset, now: the ended envs ignore these actions and return reset observations
            reset_obs, _, _, _, reset_info = self._pool.step(actions[ended], env_id=ended)
            _put(obs, reset_info["env_id"], reset_obs)
            final_obs = np.full(self.num_envs, None, dtype=object)
            for k, i in enumerate(ended):
                final_obs[i] = _row(final, k)
            info["final_obs"], info["_final_obs"] = final_obs, done
            games = {"r": self._game_return.copy(), "l": self._game_length.copy()}
            info["final_info"] = {EPISODE_STATISTICS_KEY: games, f"_{EPISODE_STATISTICS_KEY}": game_over}
            self._game_return[game_over] = 0.0
            self._game_length[game_over] = 0
        return obs, reward, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        """Closes the pool (its threads end)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def make_envpool_vec_env(
    env_id: str, num_envs: int, seed: int | None = None, env_kwargs: dict[str, Any] | None = None
) -> gym.vector.VectorEnv:
    """``num_envs`` EnvPool envs of ``env_id`` as a gymnasium vector env with same-step autoreset
    (:class:`EnvPoolVecEnv`), what ``make_vec_env(..., vectorization="envpool")`` returns.

    Args:
        env_id: a gymnasium env id EnvPool provides: ``"CartPole-v1"``, ``"ALE/Pong-v5"``, ``"HalfCheetah-v4"``...
        num_envs: envs stepped together.
        seed: env ``i`` is seeded ``seed + i``; ``None`` draws one.
        env_kwargs: EnvPool's options for the task, e.g. ``{"num_threads": 2}`` (see the module docstring for
            Atari's).

    Raises:
        ImportError: when envpool is not installed, naming ``pip install rl-lightning[envpool]``.
        ValueError: for an id EnvPool does not provide, naming the closest tasks.
    """
    return EnvPoolVecEnv(env_id, num_envs, seed=seed, env_kwargs=env_kwargs)
