"""The latency budget as the tools print it (``profiles demo --once``, ``profiles bench
pipeline``): per-stage quantiles and means of ``profiles_stage_seconds``, parked events, GC
pauses, from a worker's ``/metrics`` (``WorkerProcess.metrics()``: family -> samples)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stream.tools.runner import histogram_quantile
from stream.worker.latency import STAGES

__all__ = ["latency_budget", "min_median_max"]


def min_median_max(values: Iterable[float | None]) -> dict[str, float] | None:
    """``{"min", "median", "max"}`` of the values that are not None (None if none are): how far
    repeated runs of one measurement spread.  The median of an even count is the mean of the
    middle two."""
    vals = sorted(float(v) for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    med = vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
    return {"min": vals[0], "median": med, "max": vals[-1]}


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


def _count(samples: list) -> float:
    return sum(s.value for s in samples if s.name.endswith("_count"))


def _sum(samples: list) -> float:
    return sum(s.value for s in samples if s.name.endswith("_sum"))


def latency_budget(metrics: dict[str, list], before: dict[str, list] | None = None
                   ) -> dict[str, Any]:
    """Stage p50/p99/mean (ms), parked events (count, p99), GC pauses (count and seconds per
    generation).  ``before``: a scrape to subtract (a run's own share of the counters)."""
    def diff(name: str, labels: dict[str, str] | None = None) -> list:
        now = [s for s in metrics.get(name, [])
               if not labels or all(s.labels.get(k) == v for k, v in labels.items())]
        if before is None:
            return now
        old = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for s in before.get(name, [])}
        return [s._replace(value=s.value - old.get((s.name, tuple(sorted(s.labels.items()))), 0))
                for s in now]

    stages: dict[str, dict[str, float | None]] = {}
    for stage in STAGES:
        sm = diff("profiles_stage_seconds", {"stage": stage})
        n = _count(sm)
        stages[stage] = {"p50_ms": _ms(histogram_quantile(sm, 0.5)),
                         "p99_ms": _ms(histogram_quantile(sm, 0.99)),
                         "mean_ms": _ms(_sum(sm) / n) if n else None}
    parked = diff("profiles_parked_seconds")
    gc_out: dict[str, dict[str, float | None]] = {}
    for s in diff("profiles_gc_seconds"):
        gen = s.labels.get("generation", "?")
        if s.name.endswith("_count"):
            gc_out.setdefault(gen, {})["count"] = int(s.value)
        elif s.name.endswith("_sum"):
            gc_out.setdefault(gen, {})["seconds"] = round(s.value, 3)
    for gen, d in gc_out.items():  # the longest pause, as the bucket bound it fits under
        bounds = sorted((float(s.labels["le"]), s.value) for s in diff("profiles_gc_seconds")
                        if s.name.endswith("_bucket") and s.labels.get("generation") == gen)
        d["longest_le"] = next((le for le, c in bounds if c >= d.get("count", 0)), None)
    enc = diff("profiles_encoder_seconds")
    return {"stages": stages,
            "encoder_calls": int(_count(enc)),
            "encoder_p99_ms": _ms(histogram_quantile(enc, 0.99)),
            "parked_applied": int(_count(parked)),
            "parked_p99_ms": _ms(histogram_quantile(parked, 0.99)),
            "gc": gc_out}
