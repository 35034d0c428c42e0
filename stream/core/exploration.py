"""The exploration prior of a new arm (pure: numpy).

Every arm's posterior starts from the configured prior ``Beta(PRIOR_ALPHA, PRIOR_BETA)``
(``stream.core.bandit``).  That prior is the same for an arm nobody has seen and for an arm that
has been shown a thousand times, so how often a new arm is tried depends only on how its prior
compares with the proven arms' posteriors.  The *exploration prior* adds, for the bandit
re-rank only, optimism that fades with evidence: an arm with ``n`` impressions (summed over
every worker) is scored as if it had earned

    bonus(n) = b · max(0, 1 − n / N)

more rewards, i.e. its Thompson draw comes from ``Beta(alpha + bonus(n), beta)``.  An unseen
arm gets the whole ``b`` (``PROFILES_EXPLORE_NEW_ARM_BONUS``); the bonus shrinks linearly and
is gone at ``N`` impressions (``PROFILES_EXPLORE_NEW_ARMS``; 0 turns it off), so there is no
jump when an arm comes of age and a proven arm is never affected.  It changes what is shown,
not what is counted: the posteriors, the ranker's ``bandit_mean`` feature and ``/arms`` keep
the plain prior; the logged propensities are those of the draw actually made (with the bonus).
"""

from __future__ import annotations

import numpy as np

__all__ = ["new_arm_bonus", "with_exploration_prior"]


def new_arm_bonus(impressions: np.ndarray, young: int, bonus: float) -> np.ndarray:
    """Pseudo-rewards per arm: ``bonus · max(0, 1 − n / young)`` (zeros when ``young`` is 0)."""
    n = np.asarray(impressions, dtype=np.float64)
    if young <= 0 or bonus <= 0:
        return np.zeros_like(n)
    out: np.ndarray = bonus * np.clip(1.0 - n / float(young), 0.0, 1.0)
    return out


def with_exploration_prior(alpha: np.ndarray, beta: np.ndarray, impressions: np.ndarray,
                           young: int, bonus: float) -> tuple[np.ndarray, np.ndarray]:
    """The Beta parameters the re-rank draws from: ``alpha + bonus(n)``, ``beta`` unchanged."""
    a = np.asarray(alpha, dtype=np.float64)
    return a + new_arm_bonus(impressions, young, bonus), np.asarray(beta, dtype=np.float64)
