"""Off-policy evaluation of a bandit policy from a log with propensities (pure: numpy).

A :class:`BanditLog` row is one impression: the arm shown, its position (slot), the logging
policy's propensity of that (arm, position), and the reward (click).  For a candidate policy
with action distribution ``pi(a | row)`` (shape (n, K), or (K,) for a context-free policy):

* IPW    ``V = mean(w_i r_i)``,  ``w_i = pi(a_i | i) / p_i``
* SNIPW  ``V = sum(w_i r_i) / sum(w_i)``
* DR     ``V = mean( sum_a pi(a|i) q(a, pos_i) + w_i (r_i - q(a_i, pos_i)) )``

with ``q`` a simple reward model: per (arm, position) click rate shrunk towards the
position's mean (:func:`fit_reward_model`).  These are the formulas of obp 0.5.7's
``InverseProbabilityWeighting``, ``SelfNormalizedInverseProbabilityWeighting`` and
``DoublyRobust`` (no clipping), which the tests check against.

Confidence intervals: percentile bootstrap over rows (``n_boot`` resamples with replacement,
seeded).  SNIPW is recomputed as a ratio in every resample (obp bootstraps the already
normalised per-row terms instead); DR keeps ``q`` fixed (fit once on the whole log).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ESTIMATORS: tuple[str, ...] = ("ipw", "snipw", "dr")


@dataclass(frozen=True)
class BanditLog:
    """Columns of a logged-bandit dataset; ``action`` indexes ``arms``."""

    arms: tuple[str, ...]
    action: np.ndarray  # int, (n,)
    position: np.ndarray  # int, (n,), 0-based slot
    pscore: np.ndarray  # float, (n,), logging propensity in (0, 1]
    reward: np.ndarray  # float, (n,)
    ts: np.ndarray | None = None  # event time (ms), for time splits

    def __post_init__(self) -> None:
        n = self.action.shape[0]
        for name in ("position", "pscore", "reward"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} rows, action {n}")
        if n and not ((self.pscore > 0) & (self.pscore <= 1)).all():
            raise ValueError("every propensity must be in (0, 1]")
        if n and (self.action.min() < 0 or self.action.max() >= len(self.arms)):
            raise ValueError("action index out of range of arms")
        if n and self.position.min() < 0:
            raise ValueError("positions must be >= 0")

    @classmethod
    def from_rows(cls, arm: Sequence[str], position: Sequence[int], pscore: Sequence[float],
                  reward: Sequence[float], ts: Sequence[float] | None = None,
                  arms: Sequence[str] | None = None) -> BanditLog:
        names = tuple(arms) if arms is not None else tuple(sorted(set(arm), key=_natural))
        index = {a: i for i, a in enumerate(names)}
        missing = sorted(set(arm) - set(index))
        if missing:
            raise ValueError(f"arms not in the arm list: {missing[:5]}")
        return cls(names, np.array([index[a] for a in arm], dtype=np.int64),
                   np.asarray(position, dtype=np.int64), np.asarray(pscore, dtype=np.float64),
                   np.asarray(reward, dtype=np.float64),
                   None if ts is None else np.asarray(ts, dtype=np.float64))

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @property
    def n_arms(self) -> int:
        return len(self.arms)

    @property
    def n_positions(self) -> int:
        return int(self.position.max()) + 1 if len(self) else 0

    def take(self, rows: np.ndarray) -> BanditLog:
        return BanditLog(self.arms, self.action[rows], self.position[rows], self.pscore[rows],
                         self.reward[rows], None if self.ts is None else self.ts[rows])

    def split(self, train_frac: float) -> tuple[BanditLog, BanditLog]:
        """(first ``train_frac`` of rows by time, the rest); stable for equal times."""
        if not 0.0 < train_frac < 1.0:
            raise ValueError(f"train fraction must be in (0, 1), got {train_frac!r}")
        order = (np.argsort(self.ts, kind="stable") if self.ts is not None
                 else np.arange(len(self)))
        cut = int(round(len(self) * train_frac))
        return self.take(order[:cut]), self.take(order[cut:])

    def arm_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(impressions, rewards) per arm."""
        k = self.n_arms
        return (np.bincount(self.action, minlength=k).astype(np.float64),
                np.bincount(self.action, weights=self.reward, minlength=k))


def _natural(a: str) -> tuple[int, int, str]:
    return (0, int(a), "") if a.isdigit() else (1, 0, a)


@dataclass(frozen=True)
class Estimate:
    estimator: str
    value: float
    lower: float
    upper: float
    n_boot: int
    level: float

    def as_dict(self) -> dict[str, str | float]:
        return {"estimator": self.estimator, "value": self.value, "lower": self.lower,
                "upper": self.upper, "level": self.level, "n_boot": self.n_boot}


def fit_reward_model(log: BanditLog, strength: float = 10.0, n_positions: int | None = None
                     ) -> np.ndarray:
    """q(a, pos): per (arm, position) click rate, shrunk towards the position's mean with
    ``strength`` pseudo-impressions: ``(clicks + m * ctr_pos) / (imps + m)``; shape (K, P)."""
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength!r}")
    k = log.n_arms
    p = n_positions if n_positions is not None else max(log.n_positions, 1)
    cell = log.action * p + log.position
    imps = np.bincount(cell, minlength=k * p).reshape(k, p).astype(np.float64)
    clicks = np.bincount(cell, weights=log.reward, minlength=k * p).reshape(k, p)
    pos_imps = imps.sum(axis=0)
    pos_ctr = np.divide(clicks.sum(axis=0), pos_imps, out=np.zeros(p), where=pos_imps > 0)
    denom = imps + strength
    q: np.ndarray = np.divide(clicks + strength * pos_ctr, denom, out=np.tile(pos_ctr, (k, 1)),
                              where=denom > 0)
    return q


def _pi_rows(pi: np.ndarray, n: int, k: int) -> np.ndarray:
    pi = np.asarray(pi, dtype=np.float64)
    if pi.ndim == 1:
        pi = np.broadcast_to(pi, (n, k))
    if pi.shape != (n, k):
        raise ValueError(f"policy distribution has shape {pi.shape}, expected ({n}, {k}) or ({k},)")
    if (pi < -1e-12).any() or not np.allclose(pi.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("policy distribution rows must be probabilities summing to 1")
    return pi


def round_terms(log: BanditLog, pi: np.ndarray, q: np.ndarray | None = None
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-row (numerator, denominator) terms; an estimator is sum(num) / sum(den)."""
    n, k = len(log), log.n_arms
    pi = _pi_rows(pi, n, k)
    rows = np.arange(n)
    w = pi[rows, log.action] / log.pscore
    ones = np.ones(n)
    out = {"ipw": (w * log.reward, ones), "snipw": (w * log.reward, w)}
    if q is not None:
        q = np.asarray(q, dtype=np.float64)
        if q.shape[0] != k or q.shape[1] <= int(log.position.max(initial=0)):
            raise ValueError(f"reward model has shape {q.shape}, need ({k}, >{log.position.max()})")
        q_pos = q[:, log.position].T  # (n, K): q(a, pos_i)
        dm = (pi * q_pos).sum(axis=1)
        out["dr"] = (dm + w * (log.reward - q_pos[rows, log.action]), ones)
    return out


def estimate(log: BanditLog, pi: np.ndarray, q: np.ndarray | None = None, *,
             n_boot: int = 1000, level: float = 0.95, seed: int = 0,
             estimators: Sequence[str] = ESTIMATORS) -> dict[str, Estimate]:
    """Point estimates and percentile-bootstrap intervals (seeded) of each estimator."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if len(log) == 0:
        raise ValueError("the log has no rows")
    unknown = sorted(set(estimators) - set(ESTIMATORS))
    if unknown:
        raise ValueError(f"unknown estimators {unknown}; known: {', '.join(ESTIMATORS)}")
    if "dr" in estimators and q is None:
        q = fit_reward_model(log)
    terms = round_terms(log, pi, q)
    names = [e for e in estimators if e in terms]
    n = len(log)
    rng = np.random.default_rng(seed)
    boots = {e: np.empty(n_boot) for e in names}
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
    done = 0
    while done < n_boot:
        m = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(m, n))
        for e in names:
            num, den = terms[e]
            d = den[idx].sum(axis=1)
            # a resample where the candidate policy never agrees with the log has no weight
            boots[e][done:done + m] = np.divide(num[idx].sum(axis=1), d, out=np.zeros(m),
                                                where=d > 0)
        done += m
    tail = (1.0 - level) / 2.0
    out = {}
    for e in names:
        num, den = terms[e]
        lo, hi = np.quantile(boots[e], [tail, 1.0 - tail])
        total = float(den.sum())
        value = float(num.sum()) / total if total > 0 else 0.0
        out[e] = Estimate(e, value, float(lo), float(hi), n_boot, level)
    return out
