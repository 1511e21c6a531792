"""A pairwise case grid: every value of each axis meets every value of each other axis at least once.

Deterministic and dependency-free, so the test modules import on a machine that has only torch
and pytest (the GPU image). Greedy: each new case is the best of a few candidates, each grown from a
pair not yet covered by filling the other axes with the values that cover the most new pairs;
only cases ``allowed`` accepts are made.
"""

from __future__ import annotations

from itertools import combinations, product


def all_pairs(axes: dict, allowed=lambda case: True, candidates: int = 30) -> list[dict]:
    names = list(axes)
    missing = {
        (a, va, b, vb)
        for a, b in combinations(names, 2)
        for va, vb in product(range(len(axes[a])), range(len(axes[b])))
    }
    cases = []
    while missing:
        best = None
        for a, va, b, vb in sorted(missing)[:candidates]:
            chosen = _complete({a: va, b: vb}, axes, names, missing, allowed)
            if chosen is not None and (best is None or len(_pairs(chosen, names) & missing) > best[0]):
                best = (len(_pairs(chosen, names) & missing), chosen)
        if best is None:  # not even the first missing pair fits an allowed case: nothing can cover it
            missing.discard(min(missing))
            continue
        missing -= _pairs(best[1], names)
        cases.append({name: axes[name][best[1][name]] for name in names})
    return cases


def uncovered_pairs(cases: list[dict], axes: dict, allowed=lambda case: True) -> list[tuple]:
    """Pairs of axis values that some allowed case could hold but none of ``cases`` does."""
    names = list(axes)
    seen = {(a, case[a], b, case[b]) for case in cases for a, b in combinations(names, 2)}
    feasible = {
        (a, case[a], b, case[b])
        for case in (dict(zip(names, values)) for values in product(*axes.values()))
        if allowed(case)
        for a, b in combinations(names, 2)
    }
    return sorted(feasible - seen, key=repr)


def _pairs(chosen: dict, names: list) -> set:
    return {(a, chosen[a], b, chosen[b]) for a, b in combinations(names, 2)}


def _complete(fixed: dict, axes: dict, names: list, missing: set, allowed):
    """Fill the free axes one at a time, each with the allowed value that covers most new pairs."""
    chosen = dict(fixed)
    for name in names:
        if name in chosen:
            continue
        best = None
        for value in range(len(axes[name])):
            trial = {**chosen, name: value}
            if not _extendable(trial, axes, names, allowed):
                continue
            gain = len(_pairs(trial, [axis for axis in names if axis in trial]) & missing)
            if best is None or gain > best[0]:
                best = (gain, value)
        if best is None:
            return None
        chosen[name] = best[1]
    return chosen


def _extendable(partial: dict, axes: dict, names: list, allowed) -> bool:
    """Whether some allowed case agrees with ``partial`` (checked over the free axes' values)."""
    free = [name for name in names if name not in partial]
    for values in product(*(range(len(axes[name])) for name in free)):
        indices = {**partial, **dict(zip(free, values))}
        if allowed({name: axes[name][indices[name]] for name in names}):
            return True
    return False
