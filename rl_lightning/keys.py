"""The data contract: the keys of a collector batch, defined once.

Every batch is a :class:`tensordict.TensorDict` with batch dims ``[num_envs, T]`` (env first, time
last, torchrl's convention). Entries carry a trailing ``[1]`` dim for scalars.

========================================  ===========================================================
key                                       meaning
========================================  ===========================================================
``observation``                           observation at t (a TensorDict, one entry per key, for ``Dict``
                                          observation spaces; images stay uint8)
``action``                                action taken at t (before clipping to the env's bounds)
``action_log_prob``                       log-prob of the action under the collecting policy
``done`` / ``terminated`` / ``truncated`` flags of the observation at t (always False after autoreset)
``is_init``                               whether the observation at t is the first of its episode (after
                                          a reset of the envs, or after the episode before it ended)
``("next", "observation")``               the true next observation; the final one when the episode ended
``("next", "reward")``                    reward of the transition
``("next", "done" / "terminated" /        how the transition ended; values bootstrap on truncation,
"truncated")``                            never on termination
``("next", "episode_return")``            return of the episode that ended at this transition (0 elsewhere)
``("next", "episode_length")``            length of the episode that ended at this transition (0 elsewhere);
                                          > 0 marks the end of a whole episode, which a ``done`` cut by a
                                          training-only wrapper (a lost life under ``EpisodicLife``) is not
``state_value`` / ``advantage`` /         written by value estimators (GAE)
``value_target``
``pixels``                                rendered ``rgb_array`` frame of the observation at t,
                                          ``[H, W, 3]`` uint8 (only with ``RLDataModule(pixels=True)``)
========================================  ===========================================================
"""

from __future__ import annotations

OBSERVATION = "observation"
ACTION = "action"
ACTION_LOG_PROB = "action_log_prob"
DONE = "done"
TERMINATED = "terminated"
TRUNCATED = "truncated"
IS_INIT = "is_init"
"""``[1]`` bool: the observation at t starts an episode. True at ``t = 0`` of the first batch after the envs were
reset (a new collector, a resumed run), so consumers that carry state across batches (n-step windows, running
returns) know the trajectory was cut there, and not only where a transition was ``done``."""
NEXT = "next"
REWARD = "reward"
EPISODE_RETURN = "episode_return"
EPISODE_LENGTH = "episode_length"
STATE_VALUE = "state_value"
ADVANTAGE = "advantage"
VALUE_TARGET = "value_target"
PIXELS = "pixels"
"""The rendered frame of the observation at t, ``[H, W, 3]`` uint8 (only with ``RLDataModule(pixels=True)``)."""

NEXT_OBSERVATION = (NEXT, OBSERVATION)
NEXT_REWARD = (NEXT, REWARD)
NEXT_DONE = (NEXT, DONE)
NEXT_TERMINATED = (NEXT, TERMINATED)
NEXT_TRUNCATED = (NEXT, TRUNCATED)
NEXT_EPISODE_RETURN = (NEXT, EPISODE_RETURN)
NEXT_EPISODE_LENGTH = (NEXT, EPISODE_LENGTH)

TRANSITION_KEYS: tuple[str | tuple[str, ...], ...] = (
    OBSERVATION,
    ACTION,
    NEXT_OBSERVATION,
    NEXT_REWARD,
    NEXT_TERMINATED,
    NEXT_TRUNCATED,
    NEXT_DONE,
)
"""What one transition is: what replay buffers store, offline datasets hold, and off-policy losses (torchrl's too)
read."""
