"""Optional: RecBole 1.2.1's SASRec trained on exactly our training events, early-stopped by our
validation metric, scored through the interface of ``encoder.sasrec.SasrecModel``.

RecBole is not a dependency of the project (it pins ``ray``, ``thop`` and old ``colorlog`` /
``colorama``, and 1.2.1 predates numpy 2 and torch 2.6): install it by hand, without its
dependencies, plus the few it really imports::

    pip install --no-deps recbole==1.2.1
    pip install '.[recbole]'      # colorlog, colorama, texttable, pandas, scipy

Shims applied here, at import time of this module's ``fit_recbole_sasrec`` only:

* numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``, which RecBole's config
  aliases (``Config.compatibility_settings``): they are put back as the numpy 2 names;
* RecBole imports ``torch.utils.tensorboard`` (which needs the ``tensorboard`` package) and its
  trainer writes event files under ``./log_tensorboard``: a no-op ``SummaryWriter`` replaces it;
* ``torch.load`` (torch >= 2.6 defaults to ``weights_only=True``, which RecBole's checkpoints
  fail): not needed, because the best weights are kept in memory, no checkpoint is written;
* ``ray`` is imported only by ``recbole.quick_start``, which is not used.

Data: RecBole's "benchmark" files, built by us: one training row per training item event that
has a history, ``(user, history, target)`` with the history = the user's training events in
earlier tie groups (``ts`` before the target's: equal timestamps are one unordered step), its
last ``max_len``; the validation rows are our validation cases.  Early stopping uses our metric
(mean expected Recall@20, history excluded: ``encoder.sasrec.expected_recall``) through an
override of RecBole's ``Trainer._valid_epoch``, not RecBole's own (which excludes nothing).
An empty history scores every item 0 (RecBole's SASRec has no empty-sequence representation);
an item absent from every file scores the lowest float32 (it cannot be learnt).
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoder.sasrec import SasrecConfig, _group_ranks, _rows, expected_recall
from stream.core.errors import ConfigError, DataError


class _NullWriter:
    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def _shims() -> None:
    for old, new in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_")):
        if old not in np.__dict__:
            setattr(np, old, getattr(np, new))
    if "torch.utils.tensorboard" not in sys.modules:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            stub = types.ModuleType("torch.utils.tensorboard")
            stub.__dict__["SummaryWriter"] = _NullWriter
            sys.modules["torch.utils.tensorboard"] = stub


def _import_recbole() -> Any:
    _shims()
    try:
        import recbole.trainer.trainer as rt
        from recbole.config import Config
        from recbole.data import create_dataset, data_preparation
        from recbole.model.sequential_recommender import SASRec
        from recbole.utils import init_seed
    except ImportError as exc:
        raise ConfigError("RecBole is not installed: pip install --no-deps recbole==1.2.1 && "
                          "pip install '.[recbole]'") from exc
    rt.get_tensorboard = lambda logger: _NullWriter()  # no ./log_tensorboard
    return types.SimpleNamespace(Config=Config, create_dataset=create_dataset,
                                 data_preparation=data_preparation, SASRec=SASRec,
                                 init_seed=init_seed, Trainer=rt.Trainer)


@dataclass
class RecboleSasrecModel:
    """``SasrecModel``'s interface over a trained RecBole SASRec."""

    net: Any
    config: SasrecConfig
    n_items: int
    internal: np.ndarray  # int64 [n_items]: RecBole's id of each catalogue row, 0 if unknown
    curve: list[tuple[int, float, float | None]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_recall: float | None = None
    epochs_run: int = 0
    train_seconds: float = 0.0
    stopped: str = ""
    recbole: dict = field(default_factory=dict)

    def score(self, histories: Sequence[Sequence[int] | np.ndarray],
              ties: Sequence[Sequence[int] | np.ndarray | None] | None = None) -> np.ndarray:
        """float32 [len(histories), n_items]; ``ties`` is accepted for the interface and unused
        (RecBole reads the history in the order given: callers give a canonical order)."""
        L, cfg = self.config.max_len, self.config
        out = np.zeros((len(histories), self.n_items), dtype=np.float32)
        known = self.internal > 0
        self.net.eval()
        with torch.inference_mode():
            for s in range(0, len(histories), cfg.eval_batch):
                chunk = [_rows(h, self.n_items)[-L:] for h in histories[s:s + cfg.eval_batch]]
                seq = np.zeros((len(chunk), L), dtype=np.int64)  # RecBole: left-aligned
                lens = np.array([len(h) for h in chunk], dtype=np.int64)
                for r, h in enumerate(chunk):
                    seq[r, :len(h)] = self.internal[h]
                nz = lens > 0
                if nz.any():
                    rep = self.net.forward(torch.from_numpy(seq[nz]).to(cfg.device),
                                           torch.from_numpy(lens[nz]).to(cfg.device))
                    sc = (rep @ self.net.item_embedding.weight.T).float().cpu().numpy()
                    block = np.full((int(nz.sum()), self.n_items), np.finfo(np.float32).min,
                                    dtype=np.float32)
                    block[:, known] = sc[:, self.internal[known]]
                    out[s + np.flatnonzero(nz)] = block
        return out

    def describe(self) -> dict:
        return {"implementation": "recbole 1.2.1 SASRec", "config": asdict(self.config),
                "recbole": self.recbole, "best_epoch": self.best_epoch,
                "best_val_recall@20": self.best_val_recall, "epochs_run": self.epochs_run,
                "train_seconds": round(self.train_seconds, 1), "stopped": self.stopped,
                "curve": [{"epoch": e, "train_loss": round(lo, 6),
                           "val_recall@20": None if v is None else round(v, 6)}
                          for e, lo, v in self.curve]}


def _write(path: Path, rows: list[tuple[int, np.ndarray, int]], L: int) -> None:
    with path.open("w") as fh:
        fh.write("user_id:token\titem_id_list:token_seq\titem_id:token\n")
        for u, h, t in rows:
            fh.write(f"{u}\t{' '.join(map(str, h[-L:].tolist()))}\t{t}\n")


def fit_recbole_sasrec(train_sequences: Sequence[Sequence[int] | np.ndarray],
                       val_cases: Sequence[tuple], n_items: int,
                       config: SasrecConfig | None = None,
                       tie_groups: Sequence[Sequence[int] | np.ndarray] | None = None,
                       batch: int = 2048, inner: int = 256, workdir: str | None = None,
                       log: bool = False) -> RecboleSasrecModel:
    """RecBole's SASRec with ``config``'s max_len, hidden, blocks, heads, dropout (hidden and
    attention), lr, max_epochs, patience, eval_every, seed, device, threads; ``loss`` "ce"
    (RecBole's CE) or "bce" (BPR-style one uniform negative: RecBole's "BPR" loss).  ``batch``
    is RecBole's training batch in (history, target) rows and ``inner`` its feed-forward width
    (RecBole's defaults: 2048 and 256).  ``max_seconds`` is not honoured."""
    cfg = config or SasrecConfig()
    cfg.validate()
    rb = _import_recbole()
    if tie_groups is not None and len(tie_groups) != len(train_sequences):
        raise DataError("tie_groups must be parallel to train_sequences")
    L = cfg.max_len
    train_rows: list[tuple[int, np.ndarray, int]] = []
    for u, seq in enumerate(train_sequences):
        rows = _rows(seq, n_items)
        grp = _group_ranks(len(rows), tie_groups[u] if tie_groups is not None else None)
        first = np.searchsorted(grp, grp, side="left")  # index of each event's group start
        for j in range(len(rows)):
            if first[j] > 0:
                train_rows.append((u, rows[:first[j]], int(rows[j])))
    if not train_rows:
        raise DataError("recbole sasrec: no training event with a history")
    val_rows = [(0, _rows(c[0], n_items), int(c[1])) for c in val_cases if len(c[0])]
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    tmp = tempfile.TemporaryDirectory(prefix="recbole-") if workdir is None else None
    root = Path(workdir or (tmp.name if tmp else "."))
    t0 = time.monotonic()
    try:
        d = root / "data" / "ours"
        d.mkdir(parents=True, exist_ok=True)
        _write(d / "ours.train.inter", train_rows, L)
        _write(d / "ours.valid.inter", val_rows or train_rows[:1], L)
        _write(d / "ours.test.inter", val_rows or train_rows[:1], L)
        with (d / "ours.item").open("w") as fh:  # every catalogue row is a known item
            fh.write("item_id:token\n" + "".join(f"{i}\n" for i in range(n_items)))
        rb_cfg = dict(
            data_path=str(root / "data"), benchmark_filename=["train", "valid", "test"],
            load_col={"inter": ["user_id", "item_id_list", "item_id"], "item": ["item_id"]},
            alias_of_item_id=["item_id_list"],  # one id space for histories and targets
            MAX_ITEM_LIST_LENGTH=L, loss_type="CE" if cfg.loss == "ce" else "BPR",
            train_neg_sample_args=(None if cfg.loss == "ce"
                                   else {"distribution": "uniform", "sample_num": 1}),
            epochs=cfg.max_epochs, stopping_step=cfg.patience, eval_step=cfg.eval_every,
            valid_metric="Recall@20", metrics=["Recall"], topk=[20], train_batch_size=batch,
            eval_batch_size=cfg.eval_batch, hidden_size=cfg.hidden, inner_size=inner,
            n_layers=cfg.blocks, n_heads=cfg.heads, hidden_dropout_prob=cfg.dropout,
            attn_dropout_prob=cfg.dropout, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
            seed=cfg.seed, reproducibility=True, use_gpu=cfg.device != "cpu",
            device=cfg.device, checkpoint_dir=str(root / "ckpt"), show_progress=False,
            worker=0, save_dataset=False, save_dataloaders=False,
            eval_args={"order": "TO", "mode": "full", "group_by": "user"})
        argv, sys.argv = sys.argv, sys.argv[:1]  # RecBole's Config also parses --key=value
        try:
            conf = rb.Config(model="SASRec", dataset="ours", config_dict=rb_cfg)
        finally:
            sys.argv = argv
        rb.init_seed(conf["seed"], conf["reproducibility"])
        dataset = rb.create_dataset(conf)
        train_data, valid_data, _ = rb.data_preparation(conf, dataset)
        net = rb.SASRec(conf, train_data.dataset).to(cfg.device)
        tokens = dataset.field2token_id["item_id"]
        internal = np.array([tokens.get(str(i), 0) for i in range(n_items)], dtype=np.int64)
        model = RecboleSasrecModel(net, cfg, n_items, internal,
                                   recbole={"train_batch_size": batch, "inner_size": inner,
                                            "loss_type": rb_cfg["loss_type"],
                                            "train_rows": len(train_rows)})
        state: dict[str, Any] = {"best": None}

        trainer_base: Any = rb.Trainer

        class _Trainer(trainer_base):
            def _valid_epoch(self, valid_data: Any, show_progress: bool = False) -> Any:
                v = float(expected_recall(
                    model.score([r[1] for r in val_rows]), np.array([r[2] for r in val_rows]),
                    [r[1] for r in val_rows]).mean()) if val_rows else 0.0
                self.model.train()
                epoch = len(self.train_loss_dict)
                model.curve[-1] = (epoch, model.curve[-1][1], v)
                if model.best_val_recall is None or v > model.best_val_recall:
                    model.best_val_recall, model.best_epoch = v, epoch
                    state["best"] = copy.deepcopy(self.model.state_dict())
                if log:
                    print(f"recbole sasrec epoch {epoch}: loss {model.curve[-1][1]:.4f}, "
                          f"val recall@20 {v:.4f} ({time.monotonic() - t0:.0f} s)", flush=True)
                return v, {"recall@20": v}

            def _train_epoch(self, *a: Any, **k: Any) -> Any:
                loss = super()._train_epoch(*a, **k)
                lo = float(sum(loss) if isinstance(loss, tuple) else loss)
                model.curve.append((len(self.train_loss_dict) + 1, lo / max(1, len(a[0])),
                                    None))
                return loss

        trainer = _Trainer(conf, net)
        trainer.fit(train_data, valid_data if val_rows else None, verbose=False, saved=False,
                    show_progress=False)
        model.epochs_run = len(trainer.train_loss_dict)
        if state["best"] is not None:
            net.load_state_dict(state["best"])
            model.stopped = ("early stop (RecBole's rule: more than patience validations "
                             "below the best; an equal value resets the count)"
                             if model.epochs_run < cfg.max_epochs
                             else f"max_epochs ({cfg.max_epochs})")
        else:
            model.best_epoch = model.epochs_run
            model.stopped = f"max_epochs ({cfg.max_epochs})"
        net.eval()
        model.train_seconds = time.monotonic() - t0
        return model
    finally:
        torch.set_num_threads(threads)
        if tmp is not None:
            tmp.cleanup()
