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
