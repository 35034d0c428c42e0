"""The hybrid's ``sequence`` source at serving time: a trained next-item model (SASRec,
``encoder.sasrec``) over item ids, read from and written to plain files (no pickle).

``SequenceModel.lifts(recent)`` scores the catalogue it was trained on for one user's recent
events ``(ts, item, weight)`` (``stream.core.signals.RecentItems.get``), read in canonical
``(ts, item, weight)`` order (never the log's order inside equal ts), and returns
:class:`Lifts`: ``log1p(n_items * softmax)`` per item (0 for an item the model does not know), the
``seq_lift`` feature of ``stream.core.hybrid``, with :meth:`Lifts.top` for the source.

Files (beside the ranker's, in its model directory): ``sequence.json`` (format, config, item
ids, training record, the sha256 of the weights) and ``sequence.npz`` (the network's tensors as
float32 arrays).  The worker and ``profiles eval`` call the same :meth:`SequenceModel.lifts`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from stream.core.errors import StateError
from stream.core.files import read_meta, sha256_file, verified_file

__all__ = ["SEQUENCE_META", "Lifts", "SequenceModel"]

FORMAT = "profiles-sequence/1"
SEQUENCE_META = "sequence.json"
SEQUENCE_ARRAYS = "sequence.npz"


class Lifts:
    """One user's next-item lifts over the model's catalogue."""

    def __init__(self, model: SequenceModel, lift: np.ndarray) -> None:
        self._model = model
        self.lift = lift  # float64 [n_items]

    def top(self, k: int, exclude: Collection[str] = frozenset()) -> list[tuple[str, float]]:
        """The ``k`` best (item, lift) outside ``exclude``: lift descending, ties by item id."""
        ids = self._model.item_ids
        n = len(ids)
        if k <= 0 or n == 0:
            return []
        want = min(n, k + len(exclude))
        part = np.argpartition(-self.lift, want - 1)[:want] if want < n else np.arange(n)
        # widen to every item tied with the cut so ties resolve by id, not by argpartition
        cut = self.lift[part].min()
        part = np.flatnonzero(self.lift >= cut)
        best = sorted(((ids[i], float(self.lift[i])) for i in part.tolist()
                       if ids[i] not in exclude), key=lambda kv: (-kv[1], kv[0]))
        return best[:k]

    def __call__(self, items: Sequence[str]) -> np.ndarray:
        """float64 [len(items)]: the lift of each item (0 when the model does not know it)."""
        row = self._model.row_of
        return np.array([self.lift[row[i]] if i in row else 0.0 for i in items],
                        dtype=np.float64)


class SequenceModel:
    """A trained SASRec over ``item_ids`` (its catalogue rows), for serving."""

    def __init__(self, model: Any, item_ids: Sequence[str], meta: dict[str, Any] | None = None
                 ) -> None:
        self.model = model  # encoder.sasrec.SasrecModel
        self.item_ids = [str(i) for i in item_ids]
        if len(self.item_ids) != model.n_items:
            raise ValueError(f"{len(self.item_ids)} item ids for a model of {model.n_items} items")
        self.row_of = {it: r for r, it in enumerate(self.item_ids)}
        self.meta = dict(meta or {})

    @property
    def max_len(self) -> int:
        return int(self.model.config.max_len)

    def lifts(self, recent: Sequence[tuple[int, str, float]]) -> Lifts:
        """The lifts after ``recent`` (ts, item, weight); unknown items are skipped."""
        row = self.row_of
        hist = [row[it] for _, it, _ in sorted(recent) if it in row][-self.max_len:]
        logits = self.model.score([np.asarray(hist, dtype=np.int64)])[0].astype(np.float64)
        z = logits - logits.max()
        p = np.exp(z)
        p /= p.sum()
        return Lifts(self, np.log1p(len(self.item_ids) * p))

    # ------------------------------------------------------------------------- files
    def save_into(self, folder: Path) -> dict[str, Any]:
        """Write ``sequence.json`` + ``sequence.npz`` into ``folder`` (an unfinished model
        directory: the caller swaps it into place)."""
        arrays = {k: v.detach().cpu().float().numpy()
                  for k, v in self.model.net.state_dict().items()}
        path = folder / SEQUENCE_ARRAYS
        with path.open("wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)
        info = dict(self.meta)
        info.update(format=FORMAT, kind="sasrec", config=asdict(self.model.config),
                    item_ids=self.item_ids, arrays_file=SEQUENCE_ARRAYS,
                    arrays_sha256=sha256_file(path))
        (folder / SEQUENCE_META).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        return info

    @classmethod
    def load(cls, folder: Path | str, device: str = "cpu") -> SequenceModel:
        """Read ``sequence.json`` + ``sequence.npz`` from ``folder``; StateError (one line)
        when they cannot be used."""
        import torch

        from encoder.sasrec import SasrecConfig, SasrecModel, _Net

        folder = Path(folder)
        label = f"sequence model {folder}"
        meta = read_meta(folder, SEQUENCE_META, FORMAT, label)
        path = verified_file(folder, meta, SEQUENCE_ARRAYS, label)
        try:
            known = {f.name for f in fields(SasrecConfig)}
            cfg = SasrecConfig(**{k: v for k, v in dict(meta["config"]).items() if k in known})
            cfg.device = device
            cfg.validate()
            ids = [str(i) for i in meta["item_ids"]]
            net = _Net(len(ids), cfg)
            with np.load(path, allow_pickle=False) as z:
                state = {k: torch.from_numpy(z[k]) for k in z.files}
            net.load_state_dict(state)
            net.to(torch.device(device)).eval()
        except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
            raise StateError(f"{folder}: cannot load the sequence model ({exc})") from exc
        return cls(SasrecModel(net, cfg, len(ids)), ids, meta)

    def describe(self) -> dict[str, Any]:
        return {"kind": "sasrec", "items": len(self.item_ids),
                "config": asdict(self.model.config),
                **{k: self.meta[k] for k in ("best_epoch", "best_val_recall@20", "trained_on")
                   if k in self.meta}}
