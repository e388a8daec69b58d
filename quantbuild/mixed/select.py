"""Automatic mixed precision: which layers to promote to 16 bits under a latency budget."""

from __future__ import annotations

from collections.abc import Callable


def select_layers(
    gains: dict[str, float], ratio_of: Callable[[list[str]], float], factor: float
) -> list[str]:
    """Greedy: promote layers by fidelity gain per unit of added latency while the estimated
    T_MP / T_8 of the promoted set stays within `factor`.

    `gains` maps a candidate layer to the output error it removes when promoted alone;
    `ratio_of(layers)` is the latency model's T_MP / T_8 for a set of promoted layers."""
    base = ratio_of([])
    cost = {name: max(ratio_of([name]) - base, 1e-9) for name, gain in gains.items() if gain > 0}
    order = sorted(cost, key=lambda n: (-gains[n] / cost[n], n))
    chosen: list[str] = []
    for name in order:
        if ratio_of(chosen + [name]) <= factor:
            chosen.append(name)
    return chosen


def least_error(selections: list[list[str]], error: Callable[[list[str]], float]) -> list[str]:
    """The selection with the lowest measured error, the first one on ties; each distinct
    selection is measured once, and a lone one not at all."""
    unique = list({tuple(s): s for s in selections}.values())
    return unique[0] if len(unique) == 1 else min(unique, key=error)


def select_within(
    gains: dict[str, float],
    ratio_of: Callable[[list[str]], float],
    factor: float,
    budgets: tuple[float, ...],
    error: Callable[[list[str]], float],
) -> list[str]:
    """The greedy selection for `factor`, unless the selection for a smaller one of `budgets`,
    or none at all, measures a lower `error`. Greedy selection under a larger budget can
    measure worse than under a smaller one (promotions interact); this keeps more budget from
    costing fidelity."""
    smaller = [f for f in budgets if f < factor]
    selections = [select_layers(gains, ratio_of, f) for f in (factor, *smaller)]
    return least_error(selections + [[]], error)
