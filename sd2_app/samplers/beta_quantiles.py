"""Quantiles of the beta distribution, for the Beta schedule (Lee et al. 2024, "Beta Sampling is All You Need",
arXiv:2407.12173), in float64 without scipy.

`beta_ppf(p, a, b)` is the x with I_x(a, b) = p, where I is the regularized incomplete beta function: the number
scipy.stats.beta.ppf gives (diffusers' `_convert_to_beta` and A1111's modules/sd_schedulers.py, `beta_scheduler`,
call it), to ~1e-15. I_x is evaluated by its continued fraction (Numerical Recipes, 3rd ed., section 6.4, `betacf`,
with the modified Lentz method of section 5.2) and inverted by Newton steps kept inside a bisection bracket.
"""

from __future__ import annotations

import math

_TINY = 1e-300  # keeps Lentz's denominators off zero
_EPS = 1e-16


def _continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b); converges fast for x < (a + 1) / (a + b + 2)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            break
    return h


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def beta_cdf(x: float, a: float, b: float) -> float:
    """I_x(a, b), the beta distribution's cumulative probability at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b))
    if x < (a + 1) / (a + b + 2):
        return front * _continued_fraction(x, a, b) / a
    return 1.0 - front * _continued_fraction(1.0 - x, b, a) / b


def beta_ppf(p: float, a: float, b: float) -> float:
    """The x in [0, 1] with I_x(a, b) = p."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    x = 0.5
    log_norm = _log_beta(a, b)
    for _ in range(200):
        error = beta_cdf(x, a, b) - p
        if error == 0.0:
            return x
        lo, hi = (lo, x) if error > 0 else (x, hi)
        density = math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - log_norm)
        step = x - error / density
        following = step if lo < step < hi else 0.5 * (lo + hi)  # Newton, or bisection where it would leave
        if abs(following - x) <= 2 * _EPS * max(following, x):
            return following
        x = following
    return x


def beta_spacing(steps: int, a: float, b: float) -> tuple[float, ...]:
    """(steps,) quantiles at 1 - linspace(0, 1, steps), from 1 down to 0 (about 1 ms for 25 steps, 8 ms for 150)."""
    if steps == 1:
        return (1.0,)
    return tuple(beta_ppf(1.0 - i / (steps - 1), a, b) for i in range(steps))
