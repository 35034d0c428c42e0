"""``profiles bandit ope``: read a log with propensities, fit a candidate policy on its first
part (by time), estimate the policy's click rate on the rest (IPW, SNIPW, DR, bootstrap CIs).

Log formats (by extension):

* ``.csv``: an Open Bandit Dataset log (``item_id``, ``position``, ``click``,
  ``propensity_score``, ``timestamp``);
* ``.jsonl``: either our events — ``view`` events that carry a ``propensity`` are
  impressions, and a ``click`` whose ``impression_id`` names one makes its reward 1 (what
  ``profiles data obd`` writes) — or generic rows ``{"arm", "position", "propensity",
  "reward"[, "ts"]}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from stream.core.bandit import seeded_rng
from stream.core.ope import ESTIMATORS, BanditLog, Estimate, estimate, fit_reward_model
from stream.core.policies import Policy


def read_log(path: Path | str) -> BanditLog:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    if p.suffix.lower() == ".csv":
        from stream.data.obd import read_rows, ts_ms

        rows = list(read_rows(p))
        missing = {"item_id", "position", "click", "propensity_score"} - set(rows[0] if rows else ())
        if missing:
            raise ValueError(f"{p}: not an OBD log, missing columns {sorted(missing)}")
        return BanditLog.from_rows([str(int(r["item_id"])) for r in rows],
                                   [int(r["position"]) for r in rows],
                                   [float(r["propensity_score"]) for r in rows],
                                   [float(r["click"]) for r in rows],
                                   [ts_ms(r["timestamp"]) for r in rows]
                                   if rows and "timestamp" in rows[0] else None)
    arm, pos, ps, rew, ts = [], [], [], [], []
    impressions: dict[str, int] = {}
    clicks: set[str] = set()
    for n, line in enumerate(p.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            o = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise ValueError(f"{p}:{n}: not JSON") from None
        if not isinstance(o, dict):
            raise ValueError(f"{p}:{n}: not a JSON object")
        if "reward" in o:
            arm.append(str(o["arm"]))
            pos.append(int(o.get("position") or 0))
            ps.append(float(o["propensity"]))
            rew.append(float(o["reward"]))
            ts.append(float(o.get("ts", n)))
        elif o.get("type") == "view" and o.get("propensity") is not None:
            impressions[str(o["event_id"])] = len(arm)
            arm.append(str(o.get("arm") or o["item_id"]))
            pos.append(int(o.get("position") or 0))
            ps.append(float(o["propensity"]))
            rew.append(0.0)
            ts.append(float(o.get("ts", n)))
        elif o.get("type") == "click" and o.get("impression_id") is not None:
            clicks.add(str(o["impression_id"]))
    for eid in clicks:
        row = impressions.get(eid)
        if row is not None:
            rew[row] = 1.0
    if not arm:
        raise ValueError(f"{p}: no impressions with a propensity")
    return BanditLog.from_rows(arm, pos, ps, rew, ts)


def policy_distribution(policy: Policy, train: BanditLog, prior: tuple[float, float],
                        seed: int, samples: int = 10_000) -> np.ndarray:
    """pi(a) of one slot for a policy fit on ``train``'s counts (Beta(prior + counts))."""
    imp, rew = train.arm_counts()
    alpha = prior[0] + rew
    beta = prior[1] + np.maximum(imp - rew, 0.0)
    return policy.choice_probabilities(alpha, beta, seeded_rng(seed, "ope", policy.describe()),
                                       samples=samples)


@dataclass
class OpeResult:
    policy: str
    pi: np.ndarray
    estimates: dict[str, Estimate]

    def as_dict(self, arms) -> dict:
        top = np.argsort(-self.pi, kind="stable")[:3]
        return {"policy": self.policy,
                "top_arms": [{"arm": arms[i], "pi": float(self.pi[i])} for i in top],
                "estimates": {k: v.as_dict() for k, v in self.estimates.items()}}


def run_ope(log: BanditLog, policies: list[Policy], *, train_frac: float = 0.5,
            prior: tuple[float, float] = (1.0, 1.0), n_boot: int = 1000, level: float = 0.95,
            seed: int = 42) -> tuple[dict, list[OpeResult]]:
    train, test = log.split(train_frac)
    q = fit_reward_model(test, n_positions=max(log.n_positions, 1))
    # the logging policy's own click rate on the evaluation rows (plain mean, bootstrap CI)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(test), size=(n_boot, len(test)))
    boots = test.reward[idx].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(boots, [tail, 1 - tail])
    header = {"rows": len(log), "train_rows": len(train), "eval_rows": len(test),
              "arms": log.n_arms, "clicks": float(log.reward.sum()),
              "logged_ctr": {"value": float(test.reward.mean()), "lower": float(lo),
                             "upper": float(hi)}}
    results = []
    for pol in policies:
        pi = policy_distribution(pol, train, prior, seed)
        est = estimate(test, pi, q, n_boot=n_boot, level=level, seed=seed, estimators=ESTIMATORS)
        results.append(OpeResult(pol.describe(), pi, est))
    return header, results


def format_report(header: dict, results: list[OpeResult], arms, level: float) -> str:
    lc = header["logged_ctr"]
    pct = f"{100 * level:g}%"
    lines = [f"log: {header['rows']} impressions, {header['clicks']:.0f} clicks, {header['arms']} arms; "
             f"policy fit on the first {header['train_rows']}, evaluated on the last {header['eval_rows']}",
             f"logged policy click rate: {lc['value']:.5f} [{lc['lower']:.5f}, {lc['upper']:.5f}] ({pct} bootstrap)"]
    for r in results:
        top = np.argsort(-r.pi, kind="stable")[:3]
        lines.append(f"policy {r.policy}: top arms " + ", ".join(f"{arms[i]} ({r.pi[i]:.3f})" for i in top))
        for name, e in r.estimates.items():
            lines.append(f"  {name:<6} {e.value:.5f}  {pct} CI [{e.lower:.5f}, {e.upper:.5f}]")
    return "\n".join(lines)
