"""Seeded generators for the series of the paper's time-series case study (docs/method.md §8).

Every generator returns the raw series (a float64 NumPy array); :func:`..serialize.serialize`
rescales it into ``[0.15, 0.85]`` of the digit range, as the paper does.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import OptionError


def _check_n(n: int, low: int = 2) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < low:
        raise OptionError(f"n (the number of values) must be an int ≥ {low}, got {n!r}.")


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise OptionError(f"{name} must be a finite number {bound}, got {value!r}.")


def lorenz(
    n: int = 180, seed: int = 0, dt: float = 0.1, burn_in: float = 10.0, drift: float = 0.0,
    sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0, start: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """The x component of the Lorenz system, sampled every ``dt`` on the attractor.

    Integrated with :func:`scipy.integrate.solve_ivp` (DOP853, rtol=atol=1e-10) from a
    seeded random start; the first ``burn_in`` time units are dropped so the series starts
    on the attractor. The paper samples 500 points on t ∈ [0, 50], i.e. ``dt=0.1``.

    Args:
        n: Number of values.
        seed: Seed of the initial condition.
        dt: Sampling interval.
        burn_in: Time integrated and discarded before the first sample.
        drift: Slope of a linear drift added per sample (the paper sometimes adds one).
        sigma: The Lorenz parameter sigma (10).
        rho: The Lorenz parameter rho (28).
        beta: The Lorenz parameter beta (8/3).
        start: Initial state (x, y, z) instead of the seeded random one.
    """
    from scipy.integrate import solve_ivp

    _check_n(n)
    _check_positive("dt", dt)
    _check_positive("burn_in", burn_in, allow_zero=True)
    rng = np.random.default_rng(seed)
    state = np.array([rng.uniform(-15, 15), rng.uniform(-20, 20), rng.uniform(5, 45)])
    if start is not None:
        state = np.asarray(start, dtype=np.float64).reshape(-1)
        if state.shape != (3,) or not np.isfinite(state).all():
            raise OptionError(f"start must be three finite numbers (x, y, z), got {start!r}.")

    def field(_t: float, s: np.ndarray) -> list[float]:
        x, y, z = s
        return [sigma * (y - x), x * (rho - z) - y, x * y - beta * z]

    times = burn_in + dt * np.arange(n)
    sol = solve_ivp(field, (0.0, float(times[-1])), state, method="DOP853", t_eval=times, rtol=1e-10, atol=1e-10)
    return np.asarray(sol.y[0] + drift * np.arange(n), dtype=np.float64)


def logistic_map(n: int = 180, seed: int = 0, r: float = 3.8, burn_in: int = 100) -> np.ndarray:
    """The logistic map ``x ← r x (1 - x)`` (chaotic at r=3.8) from a seeded start in (0.1, 0.9)."""
    _check_n(n)
    _check_positive("r", r)
    if isinstance(burn_in, bool) or not isinstance(burn_in, (int, np.integer)) or burn_in < 0:
        raise OptionError(f"burn_in must be an int ≥ 0, got {burn_in!r}.")
    x = np.random.default_rng(seed).uniform(0.1, 0.9)
    out = np.empty(n)
    for i in range(burn_in + n):
        if i >= burn_in:
            out[i - burn_in] = x
        x = r * x * (1.0 - x)
    return out


def brownian(n: int = 180, seed: int = 0, dt: float = 0.1, sigma: float = 0.1) -> np.ndarray:
    """Brownian motion (a Gaussian random walk with step sd ``sigma·√dt``), starting at 0."""
    _check_n(n)
    _check_positive("dt", dt)
    _check_positive("sigma", sigma)
    steps = np.random.default_rng(seed).normal(0.0, sigma * np.sqrt(dt), size=n - 1)
    return np.concatenate([[0.0], np.cumsum(steps)])


def periodic(n: int = 180, seed: int = 0, period: float = 12.0, noise: float = 0.1) -> np.ndarray:
    """A noisy sine: ``sin(2π t / period + φ) + noise·ε`` with a seeded phase φ and Gaussian ε."""
    _check_n(n)
    _check_positive("period", period)
    _check_positive("noise", noise, allow_zero=True)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi)
    t = np.arange(n)
    return np.asarray(np.sin(2 * np.pi * t / period + phase) + noise * rng.normal(size=n), dtype=np.float64)


#: Generators by family name (the study's ``--families``).
FAMILIES = {"lorenz": lorenz, "logistic": logistic_map, "brownian": brownian, "periodic": periodic}
