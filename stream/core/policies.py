"""Bandit policies with one interface: Beta-Bernoulli Thompson sampling, UCB1, epsilon-greedy.

Pure (stdlib + numpy).  A policy turns per-arm evidence — the Beta posterior
``(alpha, beta)`` of :class:`stream.core.bandit.ArmStats`, i.e. prior + (discounted) counts,
so a new arm starts from the configured prior (cold start) — into

* ``rank(alpha, beta, rng, similarity, explore_weight)``: one served ranking, best first,
  of the blend ``(1 - w) * similarity + w * score`` (``w = 1``: the policy alone);
* ``sample_scores(alpha, beta, rng, n)``: ``n`` independent score vectors, shape (n, K);
* ``propensities(...)``: for each shown arm, the probability that the policy puts it at the
  position where it was shown (closed form for UCB1 and epsilon-greedy; for Thompson sampling
  a Monte-Carlo estimate from ``samples`` seeded re-samples, see :meth:`Policy.propensities`);
* ``choice_probabilities(alpha, beta, rng)``: pi(a) of a single slot (top-1), for off-policy
  evaluation.

Configs are frozen dataclasses validated on construction (:class:`PolicyConfigError`, a
``ConfigError`` and a ``ValueError``, with a message naming the field).  Every random draw comes
from a generator the caller passes in.  The logged propensities are those of a *fresh* draw:
a server must pass a generator that moves on between requests (the worker keeps one, seeded
from ``PROFILES_SEED``), never one re-seeded per user, which would serve the same "random"
ranking every time while the log claims the policy's spread (biasing off-policy estimates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, cast

import numpy as np
import numpy.typing as npt

from stream.core.errors import PolicyConfigError

__all__ = [
    "POLICIES",
    "EpsilonGreedy",
    "EpsilonGreedyConfig",
    "Policy",
    "PolicyConfigError",
    "Thompson",
    "ThompsonConfig",
    "UCB1",
    "UCB1Config",
    "make_policy",
    "parse_policy",
]

#: float64 scores / probabilities, one per arm (or shape (n, K))
FloatArray = npt.NDArray[np.float64]
#: arm indices (rankings), as ``argsort`` returns them
IndexArray = npt.NDArray[np.intp]


def _check_int(name: str, v: object, lo: int) -> None:
    if type(v) is not int or v < lo:
        raise PolicyConfigError(f"{name} must be an integer >= {lo}, got {v!r}")


def _check_float(name: str, v: object, lo: float, hi: float = math.inf,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    ok = False
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise PolicyConfigError(f"{name} must be a finite number in {lb}{lo}, {hi}{rb}, got {v!r}")


@dataclass(frozen=True)
class ThompsonConfig:
    #: seeded re-samples used to estimate propensities (no closed form); >= 1000
    samples: int = 1000

    def __post_init__(self) -> None:
        _check_int("thompson.samples", self.samples, 1000)


@dataclass(frozen=True)
class UCB1Config:
    #: exploration coefficient: score = mean + sqrt(c * ln(N) / n)
    c: float = 2.0

    def __post_init__(self) -> None:
        _check_float("ucb1.c", self.c, 0.0)


@dataclass(frozen=True)
class EpsilonGreedyConfig:
    #: probability of serving a uniformly random ranking instead of the greedy one
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        _check_float("egreedy.epsilon", self.epsilon, 0.0, 1.0)


def _check_inputs(alpha: npt.ArrayLike, beta: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    a = np.asarray(alpha, dtype=np.float64).reshape(-1)
    b = np.asarray(beta, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{a.shape[0]} alphas but {b.shape[0]} betas")
    if a.size and not (np.isfinite(a).all() and np.isfinite(b).all() and (a > 0).all()
                       and (b > 0).all()):
        raise ValueError("Beta parameters must be finite and > 0")
    return a, b


def _blend(scores: FloatArray, similarity: npt.ArrayLike | None, w: float) -> FloatArray:
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"explore_weight must be in [0, 1], got {w!r}")
    if similarity is None:
        return scores
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.shape[-1] != scores.shape[-1]:
        raise ValueError(f"{scores.shape[-1]} arms but {sim.shape[-1]} similarities")
    return (1.0 - w) * sim + w * scores


def _order(scores: FloatArray) -> IndexArray:
    """Best first along the last axis; ties keep input order."""
    return np.argsort(-scores, axis=-1, kind="stable")


class Policy:
    """Common interface; subclasses define :meth:`sample_scores` (and closed forms)."""

    name: ClassVar[str] = ""
    config_type: ClassVar[type] = object
    #: True when rank() uses randomness (propensities need re-sampling or a closed form)
    stochastic: ClassVar[bool] = True

    def __init__(self, config: Any = None) -> None:
        cfg = self.config_type() if config is None else config
        if not isinstance(cfg, self.config_type):
            raise PolicyConfigError(f"{self.name} needs a {self.config_type.__name__}, "
                                    f"got {type(cfg).__name__}")
        #: the policy's config dataclass (subclasses declare its concrete type)
        self.config: Any = cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def describe(self) -> str:
        """``name:k=v,...`` — what :func:`parse_policy` reads back."""
        params = ",".join(f"{f.name}={getattr(self.config, f.name)}" for f in fields(self.config))
        return f"{self.name}:{params}" if params else self.name

    # -- to implement --------------------------------------------------------------------
    def sample_scores(self, alpha: npt.ArrayLike, beta: npt.ArrayLike, rng: np.random.Generator,
                      n: int) -> FloatArray:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------
    def scores(self, alpha: npt.ArrayLike, beta: npt.ArrayLike,
               rng: np.random.Generator) -> FloatArray:
        """One score per arm for one decision."""
        a, _ = _check_inputs(alpha, beta)
        if a.size == 0:
            return np.zeros(0, dtype=np.float64)
        first: FloatArray = self.sample_scores(alpha, beta, rng, 1)[0]
        return first

    def rank(self, alpha: npt.ArrayLike, beta: npt.ArrayLike, rng: np.random.Generator,
             similarity: npt.ArrayLike | None = None,
             explore_weight: float = 1.0) -> list[int]:
        """Indices of the arms, best first, for one served ranking."""
        a, _ = _check_inputs(alpha, beta)
        if a.size == 0:
            return []
        order = _order(_blend(self.scores(alpha, beta, rng), similarity, explore_weight))
        return cast(list[int], order.tolist())

    def sample_rankings(self, alpha: npt.ArrayLike, beta: npt.ArrayLike,
                        rng: np.random.Generator, n: int,
                        similarity: npt.ArrayLike | None = None,
                        explore_weight: float = 1.0) -> IndexArray:
        """``n`` independent rankings, shape (n, K), each as :meth:`rank` would serve it."""
        return _order(_blend(self.sample_scores(alpha, beta, rng, n), similarity, explore_weight))

    def propensities(self, alpha: npt.ArrayLike, beta: npt.ArrayLike, order: list[int], k: int,
                     rng: np.random.Generator, similarity: npt.ArrayLike | None = None,
                     explore_weight: float = 1.0, samples: int | None = None) -> FloatArray:
        """P(arm ``order[j]`` is at position ``j``) under this policy, for ``j < k``.

        Generic Monte-Carlo estimate from ``samples`` re-samples drawn from ``rng`` (seeded by
        the caller) plus the served ranking itself, which is one more genuine draw from the
        same distribution: ``p = (1 + hits) / (1 + samples)``.  It is never 0 (so 1/p is
        finite), its standard error is ``sqrt(p (1 - p) / samples)`` (<= 0.016 at 1,000
        re-samples), and counting the served draw biases it up by at most
        ``(1 - p) / (1 + samples)`` (<= 0.001 at 1,000).  Closed forms override this.
        """
        n = int(samples if samples is not None else getattr(self.config, "samples", 1000))
        k = min(k, len(order))
        if k == 0:
            return np.zeros(0, dtype=np.float64)
        ranks = self.sample_rankings(alpha, beta, rng, n, similarity, explore_weight)[:, :k]
        hits = (ranks == np.asarray(order[:k])[None, :]).sum(axis=0)
        p: FloatArray = (1.0 + hits) / (1.0 + n)
        return p

    def choice_probabilities(self, alpha: npt.ArrayLike, beta: npt.ArrayLike,
                             rng: np.random.Generator, samples: int = 10_000) -> FloatArray:
        """pi(a) for one slot: the probability that each arm is ranked first."""
        a, _ = _check_inputs(alpha, beta)
        if a.size == 0:
            return np.zeros(0, dtype=np.float64)
        first = np.argmax(self.sample_scores(alpha, beta, rng, samples), axis=1)
        return np.bincount(first, minlength=a.size) / samples


class Thompson(Policy):
    """Beta-Bernoulli Thompson sampling: score = a draw from each arm's Beta posterior."""

    name = "thompson"
    config_type = ThompsonConfig
    config: ThompsonConfig

    def sample_scores(self, alpha: npt.ArrayLike, beta: npt.ArrayLike, rng: np.random.Generator,
                      n: int) -> FloatArray:
        a, b = _check_inputs(alpha, beta)
        return rng.beta(a, b, size=(n, a.size))

    def scores(self, alpha: npt.ArrayLike, beta: npt.ArrayLike,
               rng: np.random.Generator) -> FloatArray:
        # exactly one Beta draw per arm, the same stream as stream.core.bandit.thompson_scores
        a, b = _check_inputs(alpha, beta)
        return rng.beta(a, b) if a.size else np.zeros(0, dtype=np.float64)


class UCB1(Policy):
    """UCB1 on the posterior: ``mean + sqrt(c ln N / n)`` with ``mean = alpha / (alpha + beta)``
    and ``n = alpha + beta`` (counts plus prior pseudo-counts, so a new arm has a finite, large
    bonus), ``N = sum of n``.  Deterministic: a shown arm's propensity is 1."""

    name = "ucb1"
    config_type = UCB1Config
    config: UCB1Config
    stochastic = False

    def index(self, alpha: npt.ArrayLike, beta: npt.ArrayLike) -> FloatArray:
        a, b = _check_inputs(alpha, beta)
        n = a + b
        total = max(float(n.sum()), 1.0)
        return a / n + np.sqrt(self.config.c * math.log(max(total, math.e)) / n)

    def sample_scores(self, alpha: npt.ArrayLike, beta: npt.ArrayLike, rng: np.random.Generator,
                      n: int) -> FloatArray:
        return np.broadcast_to(self.index(alpha, beta), (n, np.asarray(alpha).size))

    def propensities(self, alpha: npt.ArrayLike, beta: npt.ArrayLike, order: list[int], k: int,
                     rng: np.random.Generator, similarity: npt.ArrayLike | None = None,
                     explore_weight: float = 1.0, samples: int | None = None) -> FloatArray:
        return np.ones(min(k, len(order)), dtype=np.float64)

    def choice_probabilities(self, alpha: npt.ArrayLike, beta: npt.ArrayLike,
                             rng: np.random.Generator, samples: int = 10_000) -> FloatArray:
        idx = self.index(alpha, beta)
        out = np.zeros(idx.size)
        if idx.size:
            out[int(np.argmax(idx))] = 1.0
        return out


class EpsilonGreedy(Policy):
    """With probability ``1 - epsilon`` the greedy ranking by posterior mean (blended with the
    similarity), else a uniformly random permutation.  Propensity of arm ``a`` at position
    ``j`` in closed form: ``(1 - epsilon) * [greedy[j] == a] + epsilon / K``."""

    name = "egreedy"
    config_type = EpsilonGreedyConfig
    config: EpsilonGreedyConfig

    def sample_scores(self, alpha: npt.ArrayLike, beta: npt.ArrayLike, rng: np.random.Generator,
                      n: int) -> FloatArray:
        a, b = _check_inputs(alpha, beta)
        mean = a / (a + b)
        explore = rng.random(n) < self.config.epsilon
        out = np.broadcast_to(mean, (n, a.size)).copy()
        if explore.any():
            out[explore] = rng.random((int(explore.sum()), a.size))
        return out

    def rank(self, alpha: npt.ArrayLike, beta: npt.ArrayLike, rng: np.random.Generator,
             similarity: npt.ArrayLike | None = None,
             explore_weight: float = 1.0) -> list[int]:
        a, b = _check_inputs(alpha, beta)
        if a.size == 0:
            return []
        if rng.random() < self.config.epsilon:
            return cast(list[int], rng.permutation(a.size).tolist())
        return cast(list[int], _order(_blend(a / (a + b), similarity, explore_weight)).tolist())

    def sample_rankings(self, alpha: npt.ArrayLike, beta: npt.ArrayLike,
                        rng: np.random.Generator, n: int,
                        similarity: npt.ArrayLike | None = None,
                        explore_weight: float = 1.0) -> IndexArray:
        a, b = _check_inputs(alpha, beta)
        greedy = _order(_blend(a / (a + b), similarity, explore_weight))
        out = np.broadcast_to(greedy, (n, a.size)).copy()
        explore = rng.random(n) < self.config.epsilon
        if explore.any():
            out[explore] = np.argsort(rng.random((int(explore.sum()), a.size)), axis=1)
        return out

    def propensities(self, alpha: npt.ArrayLike, beta: npt.ArrayLike, order: list[int], k: int,
                     rng: np.random.Generator, similarity: npt.ArrayLike | None = None,
                     explore_weight: float = 1.0, samples: int | None = None) -> FloatArray:
        a, b = _check_inputs(alpha, beta)
        k = min(k, len(order))
        greedy = _order(_blend(a / (a + b), similarity, explore_weight))[:k]
        eps = self.config.epsilon
        p: FloatArray = (1.0 - eps) * (greedy == np.asarray(order[:k])) + eps / a.size
        return p

    def choice_probabilities(self, alpha: npt.ArrayLike, beta: npt.ArrayLike,
                             rng: np.random.Generator, samples: int = 10_000) -> FloatArray:
        a, b = _check_inputs(alpha, beta)
        out = np.full(a.size, self.config.epsilon / max(a.size, 1))
        if a.size:
            out[int(np.argmax(a / (a + b)))] += 1.0 - self.config.epsilon
        return out


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (Thompson, UCB1, EpsilonGreedy)}


def make_policy(name: str, params: Mapping[str, Any] | None = None) -> Policy:
    """A policy by name with its config parameters; clear errors for unknown names/fields."""
    cls = POLICIES.get(name)
    if cls is None:
        raise PolicyConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    params = dict(params or {})
    known = {f.name: f for f in fields(cls.config_type)}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise PolicyConfigError(f"{name} has no parameter {', '.join(unknown)}; "
                                f"known: {', '.join(known) or 'none'}")
    return cls(cls.config_type(**params))


def parse_policy(spec: str) -> Policy:
    """``"thompson"``, ``"ucb1:c=1.5"``, ``"egreedy:epsilon=0.05"`` -> a Policy."""
    name, _, rest = spec.strip().partition(":")
    cls = POLICIES.get(name)
    if cls is None:
        raise PolicyConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    kinds = {f.name: type(f.default) for f in fields(cls.config_type)}
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise PolicyConfigError(f"expected name=value in policy {spec!r}, got {part!r}")
        kind = kinds.get(key, str)
        try:
            params[key] = kind(value.strip()) if kind in (int, float) else value.strip()
        except ValueError:
            raise PolicyConfigError(
                f"{name}.{key} must be a{'n integer' if kind is int else ' number'}, "
                f"got {value.strip()!r}") from None
    return make_policy(name, params)
