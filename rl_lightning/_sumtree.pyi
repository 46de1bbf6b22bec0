# The compiled loops of rl_lightning.replay._SumTree (rl_lightning/_sumtree.c). `tree` is _SumTree._layout:
# (k, top_len, rows per level, values pointers, minima pointers, top_values, top_minima, root).
from typing import Any

def find(
    tree: tuple[Any, ...], mass_ptr: int, count: int, limit: int, index_ptr: int, value_ptr: int, stratified: bool
) -> None: ...
def update(
    tree: tuple[Any, ...], leaf_ptr: int, value_ptr: int, count: int, limit: int, require_increasing: bool
) -> tuple[bool, bool, int, int, float]: ...
def rebuild(tree: tuple[Any, ...]) -> None: ...
