"""What a stage's run() gets: the recipe, its upstream artifacts and its datasets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from quantbuild.cores import FanOut
from quantbuild.data.dataset import Dataset
from quantbuild.recipe import Recipe
from quantbuild.store.entries import Entry


@dataclass
class Context:
    recipe: Recipe
    inputs: dict[str, Entry]
    dataset: Callable[[str], Dataset]  # "calibration" or "evaluation"
    log: Callable[[str], None]
    fan_out: FanOut | None = None  # on a cluster: stages may shard their work over workers
