"""The sum tree behind prioritized replay: proportional sampling and priority updates in batches.

:class:`~rl_lightning.replay.ReplayBuffer` keeps one per prioritized buffer; ``benchmarks/replay_buffer.py``
measures it.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Literal

import torch

_BRANCHING = 16
"""Children per node of the sum tree below the root (measured best with ``benchmarks/replay_buffer.py``)."""
_ROOT_SIZE = 8192
"""The most children of the sum tree's root, searched with one flat ``searchsorted``."""

_compiled: ModuleType | None
try:  # the sum tree's compiled loops, built by `pip install` when a C compiler is present (setup.py)
    import rl_lightning._sumtree as _compiled

    _COMPILED_ERROR = ""
except ImportError as _err:  # no compiler at install time: the torch sum tree does the same work, slower
    _compiled = None
    _COMPILED_ERROR = str(_err)


class SumTree:
    """A sum tree and a min tree over ``capacity`` leaves, vectorized over batches of queries and updates.

    Sampling and updating are bound by memory latency (random rows of large arrays) and by a fixed cost per
    torch op, so the tree is shallow and compact: nodes have ``branching`` children, and the root has as many
    as it takes to stop at ``root_size`` or fewer (one flat ``searchsorted`` over their running sum finds the
    root's child). Each level keeps its children's values and minima ``[nodes, K]``, padded with empty rows
    up to what the level above addresses (a query pushed into the padding by float rounding stays in
    bounds); a descent step gathers one row per query and searches its running sum. Leaves and minima are
    float32 (8 bytes a transition); the sums above the leaves are float64, so totals over millions of leaves
    do not drift, and every sum is recomputed from its children, left to right. With the defaults a million
    leaves are 62,500 blocks of 16 under 3,907 nodes under the root.

    Two backends run on the same tensors: ``"compiled"`` (the C loops of ``rl_lightning._sumtree``, built by
    ``pip install`` when a C compiler is present: one call per batch, 10-20 us for 256 queries or updates on
    a million leaves) and ``"torch"`` (the fallback: some 40 torch ops per batch). They do the same float
    arithmetic in the same order, so they build the same tree, bit for bit, and find the same leaves. The
    compiled loops write through the tensors' data pointers (taken once; the tensors are only changed in place).
    """

    def __init__(
        self,
        capacity: int,
        branching: int = _BRANCHING,
        root_size: int = _ROOT_SIZE,
        backend: Literal["compiled", "torch"] | None = None,
    ) -> None:
        if backend is None:
            backend = "torch" if _compiled is None else "compiled"
        if backend == "compiled" and _compiled is None:
            raise ValueError(
                f"backend='compiled' is unavailable: rl_lightning._sumtree did not build or import "
                f"({_COMPILED_ERROR}). Reinstall with a C compiler (pip install -e .), or use backend='torch'."
            )
        self.backend = backend
        k = self.branching = branching
        self.capacity = capacity
        counts = [-(-capacity // k)]  # nodes per level, the parents of the leaves first
        while counts[-1] > root_size:
            counts.append(-(-counts[-1] // k))
        rows = [n * k for n in counts[1:]] + [counts[-1]]
        # Per level, the parents of the leaves first: the values and minima of the nodes' children.
        self._values = [torch.zeros(rows[0], k, dtype=torch.float32)]
        self._values += [torch.zeros(n, k, dtype=torch.float64) for n in rows[1:]]
        self._minima = [torch.full((n, k), math.inf, dtype=torch.float32) for n in rows]
        # The root's children (the top level): their totals and minima, and the running sum of the totals.
        self._top_values = torch.zeros(rows[-1], dtype=torch.float64)
        self._top_minima = torch.full((rows[-1],), math.inf, dtype=torch.float32)
        self._root = torch.zeros(rows[-1] + 1, dtype=torch.float64)
        self._strata = torch.zeros(0, dtype=torch.float64)
        self._layout = self._pointers()

    def _pointers(self) -> tuple[Any, ...]:
        """The layout the compiled loops take: sizes and the data pointers of the tensors (updated in place)."""
        return (
            self.branching,
            len(self._top_values),
            tuple(len(values) for values in self._values),
            tuple(values.data_ptr() for values in self._values),
            tuple(minima.data_ptr() for minima in self._minima),
            self._top_values.data_ptr(),
            self._top_minima.data_ptr(),
            self._root.data_ptr(),
        )

    def __getstate__(self) -> dict[str, Any]:
        # A copy (copy.deepcopy, pickle) has tensors of its own: its pointers are taken again in __setstate__.
        return {name: value for name, value in self.__dict__.items() if name != "_layout"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._layout = self._pointers()

    @property
    def total(self) -> float:
        """The sum of all leaves."""
        return float(self._root[-1])

    @property
    def min(self) -> torch.Tensor:
        """The smallest non-empty leaf, a 0-d float32 tensor (+inf when all are empty)."""
        return self._top_minima.amin()

    def get(self, leaf: torch.Tensor) -> torch.Tensor:
        """The values of the leaves ``leaf`` (float32)."""
        return self._values[0].view(-1).index_select(0, leaf)

    def leaves(self, count: int) -> torch.Tensor:
        """A copy of the first ``count`` leaves (float32)."""
        return self._values[0].view(-1)[:count].clone()

    def update(self, leaf: torch.Tensor, value: torch.Tensor) -> None:
        """Sets the leaves ``leaf`` (int64, no duplicates) to ``value`` (float32, > 0); recomputes their ancestors."""
        if len(leaf) == 0:
            return
        if _compiled is not None and self.backend == "compiled":
            if not self._compiled_update(leaf, value, self.capacity, require_increasing=False)[0]:
                raise ValueError(
                    f"Sum-tree update refused: leaves must be in [0, {self.capacity}) and values finite. Pass the "
                    "indices of stored transitions and finite priorities."
                )
            return
        node, total, minimum = leaf, value, value
        for values, minima in zip(self._values, self._minima, strict=True):
            # Several updated nodes can share a parent: each copy of it writes the same recomputed total.
            values.view(-1).index_copy_(0, node, total)
            minima.view(-1).index_copy_(0, node, minimum)
            node = node.div(self.branching, rounding_mode="floor")
            total = _row_sums(values.index_select(0, node))
            minimum = minima.index_select(0, node).amin(1)
        self._top_values.index_copy_(0, node, total)
        self._top_minima.index_copy_(0, node, minimum)
        torch.cumsum(self._top_values, 0, out=self._root[1:])

    def rebuild(self, leaves: torch.Tensor) -> None:
        """Sets the first ``len(leaves)`` leaves, empties the rest, and recomputes the whole tree."""
        if _compiled is not None and self.backend == "compiled":
            for values, minima in zip(self._values, self._minima, strict=True):
                values.zero_()
                minima.fill_(math.inf)
            self._values[0].view(-1)[: len(leaves)] = leaves
            self._minima[0].view(-1)[: len(leaves)] = leaves
            _compiled.rebuild(self._layout)
            return
        total, minimum = leaves, leaves
        for values, minima in zip(self._values, self._minima, strict=True):
            values.zero_().view(-1)[: len(total)] = total
            minima.fill_(math.inf).view(-1)[: len(minimum)] = minimum
            total, minimum = _row_sums(values), minima.amin(1)
        self._top_values.copy_(total)
        self._top_minima.copy_(minimum)
        torch.cumsum(self._top_values, 0, out=self._root[1:])

    def find(self, mass: torch.Tensor, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The leaves whose intervals of the running sum over all leaves hold ``mass`` (float64, ``[0, total)``).

        Returns the leaves (int64; clamped to ``limit - 1`` when given: float rounding could overshoot the last
        non-empty leaf) and their values (float32).
        """
        if _compiled is not None and self.backend == "compiled":
            return self._compiled_find(mass, limit, stratified=False)
        k = self.branching
        node = torch.searchsorted(self._root, mass, right=True).sub_(1).clamp_(0, len(self._top_values) - 1)
        residual = (mass - self._root.index_select(0, node)).unsqueeze_(1)
        for h in range(len(self._values) - 1, -1, -1):
            rows = self._values[h].index_select(0, node)
            # Exclusive running sums start at 0, so the child is in [0, K - 1]: the last child whose exclusive sum
            # is <= the residual (zero-width children are passed over). Counted rather than binary-searched: the
            # same child on any row, also where rounding makes the sums dip, and the compiled loop has no branch.
            exclusive = rows.cumsum(1, dtype=torch.float64).sub_(rows)
            child = (exclusive <= residual).sum(1, keepdim=True).sub_(1).clamp_(min=0)  # 0 only for a mass < 0
            if h:
                residual.sub_(exclusive.gather(1, child))
            node = torch.add(child.view(-1), node, alpha=k)
        node.clamp_(max=self.capacity - 1 if limit is None else limit - 1)
        return node, self.get(node)

    def sample(self, uniform: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stratified proportional sampling: the leaves of the masses ``(uniform_i + i) * total / n``.

        Args:
            uniform: ``n`` draws in ``[0, 1)`` (float64), one per equal segment of the total mass.
            limit: the number of non-empty leaves (the leaves found are at most ``limit - 1``).

        Returns:
            The leaves (int64, ascending) and their values divided by the smallest leaf (float32).
        """
        if _compiled is not None and self.backend == "compiled":
            return self._compiled_find(uniform, limit, stratified=True)
        n = len(uniform)
        if len(self._strata) != n:
            self._strata = torch.arange(n, dtype=torch.float64)
        leaf, value = self.find(uniform.add(self._strata).mul_(self.total / n), limit)
        return leaf, value.div_(self.min)

    def try_update(self, leaf: torch.Tensor, value: torch.Tensor, limit: int) -> tuple[bool, bool, int, int, float]:
        """Checks a batch and updates the tree with it when it can, in one pass: when the leaves (int64, not
        empty) strictly increase, lie in ``[0, limit)`` and the values (float32) are finite, sets them as
        :meth:`update` does.

        Returns:
            ``(updated, increasing, low, high, largest)``: whether the batch was applied, whether the leaves
            strictly increase, the smallest and largest leaf, and the largest value (not finite when any value is
            NaN or infinite). A refused batch changes nothing.
        """
        if _compiled is not None and self.backend == "compiled":
            return self._compiled_update(leaf, value, limit, require_increasing=True)
        largest = float(value.max())  # NaN if any is NaN
        if len(leaf) == 1 or bool((leaf[1:] > leaf[:-1]).all()):
            increasing, low, high = True, int(leaf[0]), int(leaf[-1])
        else:
            bounds = torch.aminmax(leaf)
            increasing, low, high = False, int(bounds.min), int(bounds.max)
        accept = increasing and low >= 0 and high < limit and math.isfinite(largest)
        if accept:
            self.update(leaf, value)
        return accept, increasing, low, high, largest

    def _compiled_update(
        self, leaf: torch.Tensor, value: torch.Tensor, limit: int, require_increasing: bool
    ) -> tuple[bool, bool, int, int, float]:
        assert _compiled is not None
        # Raw pointers: the dtypes and the layout must be exactly what the C loop reads.
        leaf = leaf.to(torch.int64).contiguous()
        value = value.to(torch.float32).contiguous()
        return _compiled.update(
            self._layout, leaf.data_ptr(), value.data_ptr(), leaf.shape[0], limit, require_increasing
        )

    def _compiled_find(
        self, mass: torch.Tensor, limit: int | None, stratified: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert _compiled is not None
        # Raw pointers: the dtype and the layout must be exactly what the C loop reads.
        mass = mass.to(torch.float64).contiguous()
        n = mass.shape[0]
        leaf = torch.empty(n, dtype=torch.int64)
        value = torch.empty(n, dtype=torch.float32)
        bound = self.capacity if limit is None else limit
        _compiled.find(self._layout, mass.data_ptr(), n, bound, leaf.data_ptr(), value.data_ptr(), stratified)
        return leaf, value


def _row_sums(rows: torch.Tensor) -> torch.Tensor:
    """The float64 sums of ``[n, K]`` rows, added left to right (a running sum's last column, as the C loops add)."""
    return rows.cumsum(1, dtype=torch.float64)[:, -1]
