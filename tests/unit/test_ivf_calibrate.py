"""The IVF's lists probed per search are calibrated at each training (index/ivf.py:
``IvfIndex._calibrate``): the fewest of ``probe_ladder`` whose recall@20 on profile-like queries
drawn from its own vectors reaches ``target_recall``.  A fixed share of the lists (the former
``auto_nprobe``, a tenth) found ~0.6 of the neighbours on data without cluster structure, and
probed 8-16x more lists than needed on clustered data."""

from __future__ import annotations

import numpy as np
import pytest

from index.bench import Gen
from index.ivf import MIN_PROBES, IvfIndex, calibration_queries, probe_ladder
from stream.core.errors import ConfigError
from stream.settings import Settings


def _recall(ix: IvfIndex, ids: list[str], x: np.ndarray, q: np.ndarray, k: int = 20) -> float:
    truth = np.argsort(-(q @ x.T), axis=1)[:, :k]
    got = ix.search(q, k)
    return float(np.mean([len({ids[j] for j in truth[i]} & {u for u, _ in got[i]}) / k
                          for i in range(len(q))]))


def _mixtures(rng: np.random.Generator, x: np.ndarray, m: int) -> np.ndarray:
    q = np.stack([x[rng.integers(0, len(x), 3)].sum(axis=0) for _ in range(m)])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def test_probe_ladder_doubles_from_the_minimum_to_all_lists() -> None:
    assert probe_ladder(1131) == [16, 32, 64, 128, 256, 512, 1024, 1131]
    assert probe_ladder(10) == [10]
    assert probe_ladder(16) == [16]


def test_calibration_queries_are_mixtures_of_a_list_not_stored_vectors() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    lists = rng.integers(0, 5, 500)
    q = calibration_queries(x, lists, 64, seed=1)
    assert q.shape == (64, 16)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    assert (q @ x.T).max() < 0.9999  # never one stored vector alone (lists of ~100)
    assert np.array_equal(q, calibration_queries(x, lists, 64, seed=1))  # pinned


def test_unstructured_data_gets_the_lists_its_target_recall_needs() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30_000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"i{j}" for j in range(len(x))]
    ix = IvfIndex(64, "items", exact_below=20_000, background=False, target_recall=0.97)
    ix.upsert(ids, x)
    assert ix.factory.startswith("IVF")
    assert ix.probes > ix._nlist // 10  # more than the former tenth of the lists
    assert ix.calibration[ix.probes] >= 0.97
    assert all(r < 0.97 for p, r in ix.calibration.items() if p < ix.probes)
    assert _recall(ix, ids, x, _mixtures(rng, x, 200)) >= 0.95


def test_clustered_data_probes_few_lists_and_keeps_its_recall() -> None:
    g = Gen(384, seed=2)
    x = g.items(30_000)
    ids = [f"i{j}" for j in range(len(x))]
    ix = IvfIndex(384, "items", exact_below=20_000, background=False)
    ix.upsert(ids, x)
    assert ix.probes == MIN_PROBES < ix._nlist // 10
    assert _recall(ix, ids, x, g.profiles(x, 200)) >= 0.99


def test_a_set_nprobe_is_used_as_is_and_nothing_is_calibrated() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    ix = IvfIndex(16, "items", exact_below=1000, background=False, nprobe=3)
    ix.upsert([f"i{j}" for j in range(len(x))], x)
    assert ix.factory.startswith("IVF") and ix.probes == 3 and ix.calibration == {}


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_a_target_recall_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="target_recall"):
        IvfIndex(16, "items", target_recall=bad)
    with pytest.raises(ConfigError, match="index_target_recall"):
        Settings.from_env({"PROFILES_INDEX_TARGET_RECALL": str(bad)})
