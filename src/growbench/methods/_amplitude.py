"""Amplitude (γ) line search for ``tiny`` with few loss evaluations (docs/methods/tiny.md).

The dense search evaluates L(0) and L on 20 log-spaced γ in [1e-4, 1] (plus decade extensions up
to ``gamma_max``): 21+ evaluations. Here: L(0) and a coarse log grid (``points_per_decade``, 1 by
default: 1e-4, 1e-3, …, 1) in one batched call; while the best γ is the top of the grid, one more
decade (up to ``gamma_max``); then Brent's method in log10 γ (golden section; parabolic steps with
the parabola in s = γ², exact for L(γ) ≈ L(0) − FO·γ² + c·γ⁴) between the best grid point's
neighbours, seeded with the three nearest known points so the first step is already parabolic,
stopped after ``max_refine`` evaluations, when the bracket is below ``xtol`` decades, or when the
latest parabola puts the minimum within ``xtol`` of the best point. Limitation: a basin narrower
than the coarse spacing (one decade) can be missed; the dense grid's spacing is 0.21 decade.

The result is the lowest loss seen over every evaluation (γ = 0 included; ties go to the earlier
evaluation, so γ = 0 wins a tie), hence γ = 0 when nothing beats L(0). Non-finite losses count as
+∞ when comparing but are recorded as they came.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

_GOLDEN = 0.3819660112501051  # (3 − √5) / 2

BatchLoss = Callable[[list[float]], Sequence[float]]


@dataclass
class AmplitudeResult:
    gamma: float  # chosen amplitude; 0.0 when nothing beats L(0)
    loss: float  # L(gamma)
    curve: list[tuple[float, float]] = field(default_factory=list)  # (γ, L), evaluation order
    calls: int = 0  # calls to the loss function (each may evaluate several γ at once)

    @property
    def evaluations(self) -> int:
        return len(self.curve)


def batched(loss_at: Callable[[float], float]) -> BatchLoss:
    """Adapt a scalar L(γ) to the batched interface of :func:`search_amplitude`."""
    return lambda gammas: [loss_at(g) for g in gammas]


def _key(loss: float) -> float:
    return loss if math.isfinite(loss) else math.inf


def search_amplitude(
    losses: BatchLoss,
    gamma_min: float = 1e-4,
    gamma_top: float = 1.0,
    gamma_max: float = 1e3,
    points_per_decade: int = 1,
    max_refine: int = 4,
    xtol: float = 0.05,
) -> AmplitudeResult:
    """Choose γ minimising L(γ) with few evaluations.

    ``losses(gammas)`` returns L for every γ of the list (``tiny._LossAtGamma`` has this form; use
    :func:`batched` for a scalar function). ``xtol`` is Brent's tolerance in log10 γ (decades);
    ``max_refine`` caps the refinement evaluations. Evaluations: 1 + ``points_per_decade``·decades
    + 1 for the coarse grid, ``points_per_decade`` per extension decade, at most ``max_refine``.
    """
    if not 0 < gamma_min <= gamma_top <= gamma_max:
        raise ValueError("amplitude: need 0 < gamma_min <= gamma_top <= gamma_max")
    if points_per_decade < 1 or max_refine < 0 or xtol <= 0:
        raise ValueError("amplitude: need points_per_decade >= 1, max_refine >= 0, xtol > 0")
    result = AmplitudeResult(0.0, math.nan)
    known: dict[float, float] = {}  # log10 γ -> L, positive γ only

    def evaluate(gammas: list[float]) -> list[float]:
        values = [float(v) for v in losses(gammas)]
        if len(values) != len(gammas):
            raise ValueError("amplitude: the loss function returned a wrong number of values")
        result.calls += 1
        for g, v in zip(gammas, values, strict=True):
            result.curve.append((g, v))
            if g > 0:
                known[math.log10(g)] = v
        return values

    lo, top = math.log10(gamma_min), math.log10(gamma_top)
    steps = max(1, math.ceil((top - lo) * points_per_decade - 1e-9)) if top > lo else 0
    grid = [lo + (top - lo) * i / steps for i in range(steps)] + [top]
    evaluate([0.0] + [10**t for t in grid])
    ceiling = math.log10(gamma_max) + 1e-12

    def best_t() -> float:
        return min(known, key=lambda t: (_key(known[t]), t))

    while best_t() == top and top + 1 <= ceiling:
        extra = [top + i / points_per_decade for i in range(1, points_per_decade + 1)]
        evaluate([10**t for t in extra])
        top = extra[-1]

    # Refine only when some positive γ beats L(0) (else γ = 0, as the dense grid would choose).
    if _key(known[best_t()]) < _key(result.curve[0][1]) and max_refine > 0:
        _brent(known, evaluate, max_refine, xtol)

    gamma, loss = result.curve[0]
    for g, v in result.curve[1:]:
        if _key(v) < _key(loss):
            gamma, loss = g, v
    result.gamma, result.loss = gamma, loss
    return result


def _brent(
    known: dict[float, float],
    evaluate: Callable[[list[float]], list[float]],
    max_refine: int,
    xtol: float,
) -> None:
    """Brent's minimisation in t = log10 γ inside the best known point's neighbours."""
    ts = sorted(known)
    i = min(range(len(ts)), key=lambda j: (_key(known[ts[j]]), ts[j]))
    x = ts[i]
    a = ts[i - 1] if i > 0 else x
    b = ts[i + 1] if i + 1 < len(ts) else x
    if b - a <= 2 * xtol:
        return
    # Seed the parabola with the two nearest known points (the bracket ends when interior).
    others = sorted((t for t in ts if t != x), key=lambda t: (abs(t - x), t))
    fx = _key(known[x])
    w = others[0] if others else x
    v = others[1] if len(others) > 1 else w
    fw, fv = _key(known[w]), _key(known[v])
    d = e = b - a
    for _ in range(max_refine):
        xm = 0.5 * (a + b)
        tol1 = xtol
        tol2 = 2 * tol1
        if abs(x - xm) <= tol2 - 0.5 * (b - a):
            break
        golden = True
        if abs(e) > tol1 and len({x, w, v}) == 3 and math.isfinite(fw) and math.isfinite(fv):
            etemp, e = e, d
            u = _parabola_vertex(x, fx, w, fw, v, fv)
            if u is not None and a < u < b and abs(u - x) < 0.5 * abs(etemp):
                if abs(u - x) < tol1:  # the latest parabola puts the minimum at x: converged
                    break
                d = u - x
                if u - a < tol2 or b - u < tol2:
                    d = math.copysign(tol1, xm - x)
                golden = False
        if golden:
            e = (a - x) if x >= xm else (b - x)
            d = _GOLDEN * e
        u = x + (d if abs(d) >= tol1 else math.copysign(tol1, d))
        u = min(max(u, a), b)
        if u in known:  # nothing new to learn (degenerate bracket)
            break
        fu = _key(evaluate([10**u])[0])
        if fu < fx:
            if u >= x:
                a = x
            else:
                b = x
            v, fv, w, fw, x, fx = w, fw, x, fx, u, fu
        else:
            if u < x:
                a = u
            else:
                b = u
            if fu <= fw or w == x:
                v, fv, w, fw = w, fw, u, fu
            elif fu <= fv or v in (x, w):
                v, fv = u, fu


def _parabola_vertex(x: float, fx: float, w: float, fw: float, v: float, fv: float) -> float | None:
    """log10 γ of the vertex of the parabola in s = γ² through three points given in log10 γ, or
    None when it opens downwards or its vertex is at s ≤ 0. The small-γ shape of TINY's loss,
    L(γ) ≈ L(0) − FO·γ² + c·γ⁴, is such a parabola, so one step is exact on it."""
    sx, sw, sv = 10 ** (2 * x), 10 ** (2 * w), 10 ** (2 * v)
    curvature = (fx - fw) / (sx - sw) - (fw - fv) / (sw - sv)
    if curvature * (sx - sv) <= 0:
        return None
    r = (sx - sw) * (fx - fv)
    q = (sx - sv) * (fx - fw)
    p = (sx - sv) * q - (sx - sw) * r
    q = 2 * (q - r)
    if q == 0:
        return None
    s = sx - p / q
    return 0.5 * math.log10(s) if s > 0 else None
