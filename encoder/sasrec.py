"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) in torch: the
sequential baseline of ``profiles eval``, trained on the training part only, early-stopped on
validation Recall@20 (new-items protocol: history excluded).

Model: item embedding (scaled by sqrt(hidden)) + learned positional embedding, dropout, ``blocks``
pre-LN transformer blocks (causal multi-head self-attention, point-wise two-layer ReLU feed-forward
of width ``hidden``, residuals, dropout), a final layer norm; an item's score is the dot product of
the sequence representation with the (shared) item embedding.  Adam.

Two losses (``SasrecConfig.loss``): ``"ce"``, full softmax cross-entropy over the catalogue
(Klenitskiy & Vasilev, RecSys 2023, report that it beats the original loss by a wide margin), and
``"bce"``, the paper's binary cross-entropy with one sampled negative per target (uniform over
the items the user never touched in training).

**Equal timestamps.**  A log orders events with equal ``ts`` arbitrarily (MovieLens: by item id),
and no method may learn that order.  Every function here takes optional *tie ids* parallel to a
sequence (typically the timestamps; consecutive equal ids form one unordered group).  Two ways
to honour them (``SasrecConfig.ties``):

* ``"shuffle"`` (default, chosen on validation): the original per-token SASRec (each token
  predicts the next one), with the order inside each group drawn anew every epoch, so no order
  is learnt; at inference the history is read in the order given (callers give a canonical
  order, never the log's), and ``ties`` is not needed.
* ``"set"``: a group is a set.  Attention is group-causal (a token sees every token of its own
  and earlier groups), all tokens of a group share one position (that of the group's last
  slot), and the representation of a group is the mean of its tokens' outputs.  The items of
  group g are trained as targets of the representation of group g - 1, exactly the test-time
  situation (history = events with ts < t), and scores are invariant, up to float rounding, to
  the order of the history inside each group (pass its tie ids to ``score``).

On MovieLens-100k (README) "shuffle" validated slightly better than "set" for two seeds
(Recall@20 0.262 / 0.264 against 0.259 / 0.257): it also learns from the pairs of items rated
in the same second, which "set" uses only as context.  Without tie ids every token is its own group and both are
the original SASRec.

Training data: each user's training sequence is cut, from its end, into windows of at most
``max_len`` tokens; consecutive windows overlap by one group, so every event is a target exactly
once (a window's first group is context only, unless the window opens the sequence; a group of
``max_len`` or more equal-``ts`` events is a target only in part).  Every target of every window
is in the loss: the paper trained on each user's last ``max_len`` events only.

**Inference edge cases** (``SasrecModel.score``): a history longer than ``max_len`` keeps its
last ``max_len`` events (a group cut in two keeps its later part); an empty history is scored
with a learned *start* vector, trained as the representation that predicts each user's first
group (a learned prior, close to first-event popularity).  History rows outside the catalogue
raise ``DataError``.

Determinism: the same config, data and thread count give the same weights (torch RNG forked
and seeded, numpy ``default_rng(seed)``, ``torch.use_deterministic_algorithms`` during
training (warn-only off the CPU), restored afterwards; so are the torch thread count and the
global RNG state).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stream.core.errors import ConfigError, DataError

LOSSES = ("ce", "bce")
TIES = ("set", "shuffle")


@dataclass
class SasrecConfig:
    max_len: int = 50
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    lr: float = 1e-3
    batch: int = 128  # windows per step
    max_epochs: int = 200
    patience: int = 10  # validations without improvement before stopping
    eval_every: int = 1  # validate every this many epochs
    loss: str = "ce"  # "ce": full softmax; "bce": one sampled negative per target
    ties: str = "shuffle"  # "shuffle" or "set" (module docstring)
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    eval_batch: int = 512
    max_seconds: float | None = None  # wall-clock budget for training (None: no limit)

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"sasrec loss must be one of {LOSSES}, got {self.loss!r}")
        if self.ties not in TIES:
            raise ConfigError(f"sasrec ties must be one of {TIES}, got {self.ties!r}")
        for name in ("max_len", "hidden", "blocks", "heads", "batch", "max_epochs", "patience",
                     "eval_every", "threads", "eval_batch"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"sasrec {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ConfigError(f"sasrec hidden ({self.hidden}) must be a multiple of heads "
                              f"({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"sasrec dropout must be in [0, 1), got {self.dropout}")
        if not self.lr > 0:
            raise ConfigError(f"sasrec lr must be > 0, got {self.lr}")


# ------------------------------------------------------------------------------------ network

class _Block(nn.Module):
    def __init__(self, d: int, heads: int, p: float) -> None:
        super().__init__()
        self.heads, self.p = heads, p
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, d), nn.Linear(d, d)
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None],
                                           dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ff2(self.drop(F.relu(self.ff1(self.ln2(x))))))


class _Net(nn.Module):
    def __init__(self, n_items: int, cfg: SasrecConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.scale = math.sqrt(d)
        self.item = nn.Embedding(n_items + 1, d, padding_idx=0)  # row 0: padding
        self.pos = nn.Embedding(cfg.max_len + 1, d, padding_idx=0)
        self.start = nn.Parameter(torch.zeros(d))  # the representation of an empty history
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(d, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
        self.ln = nn.LayerNorm(d)
        for emb in (self.item, self.pos):
            nn.init.xavier_normal_(emb.weight)
            with torch.no_grad():
                emb.weight[0].zero_()

    def group_reps(self, items: torch.Tensor, grp: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``items`` [B, L] (0 = padding, item row + 1 otherwise), ``grp`` [B, L] the local group
        of each token (0, 1, ... from the first real token; -1 on padding), ``pos`` [B, L] (0 on
        padding).  Returns [B, L, d]: at index g, the mean output of the tokens of group g."""
        real = items > 0
        x = self.drop(self.item(items) * self.scale + self.pos(pos)) * real[..., None]
        # token i sees token j when j is real and not in a later group; padding sees padding
        allowed = (grp[:, None, :] <= grp[:, :, None]) & (real[:, None, :] | ~real[:, :, None])
        for blk in self.blocks:
            x = blk(x, allowed) * real[..., None]
        h = self.ln(x) * real[..., None]
        g = grp.clamp(min=0)
        sums = torch.zeros_like(h).scatter_add_(1, g[..., None].expand_as(h), h)
        cnt = torch.zeros(h.shape[:2], dtype=h.dtype, device=h.device).scatter_add_(
            1, g, real.to(h.dtype))
        return sums / cnt.clamp(min=1.0)[..., None]

    def catalogue(self) -> torch.Tensor:
        return self.item.weight[1:]


# ------------------------------------------------------------------------- sequences -> batches

def _group_ranks(n: int, ties: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """Consecutive equal tie ids -> group ranks 0, 0, 1, 2, 2, ...; no ties: 0..n-1."""
    if ties is None:
        return np.arange(n, dtype=np.int64)
    t = np.asarray(ties)
    if len(t) != n:
        raise DataError(f"tie ids ({len(t)}) and sequence ({n}) differ in length")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(t[1:] != t[:-1])]).astype(np.int64)


def _rows(seq: Sequence[int] | np.ndarray, n_items: int) -> np.ndarray:
    a = np.asarray(seq, dtype=np.int64).reshape(-1)
    if len(a) and (a.min() < 0 or a.max() >= n_items):
        raise DataError(f"item rows must be in [0, {n_items}); got {a.min()}..{a.max()}")
    return a


def _layout(grp: np.ndarray, L: int, own_groups: bool) -> tuple[np.ndarray, np.ndarray]:
    """Local group and position of a (right-aligned) window's tokens, length m <= L."""
    m = len(grp)
    if m == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if own_groups:
        return np.arange(m, dtype=np.int64), np.arange(L - m + 1, L + 1, dtype=np.int64)
    local = grp - grp[0]
    last = np.r_[local[1:] != local[:-1], True]  # the last token of each group
    last_slot = np.flatnonzero(last)  # per group, index (in the window) of its last token
    return local, (L - m + 1 + last_slot[local]).astype(np.int64)


def _pack(windows: list[tuple[np.ndarray, np.ndarray]], L: int, own_groups: bool
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-aligned [B, L] arrays (items + 1, local group or -1, position or 0)."""
    b = len(windows)
    items = np.zeros((b, L), np.int64)
    grp = np.full((b, L), -1, np.int64)
    pos = np.zeros((b, L), np.int64)
    for r, (it, g) in enumerate(windows):
        m = len(it)
        if m:
            lg, ps = _layout(g, L, own_groups)
            items[r, L - m:], grp[r, L - m:], pos[r, L - m:] = it + 1, lg, ps
    return items, grp, pos


def _windows(grp: np.ndarray, L: int) -> list[tuple[int, int]]:
    """[start, end) windows of at most L tokens covering a sequence, from its end.  A window
    starts at a group edge when that leaves it more than one group, else it cuts into the
    previous group for context; the next window ends where the window's first group ends, so
    the first group (context only in a window that does not open the sequence) is a target in
    the next one.  Every event of a group of fewer than L events is a target exactly once;
    a group of L or more events only in part."""
    n = len(grp)
    edges = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]])  # group starts
    ends = np.r_[edges[1:], n]  # group ends, parallel
    out = []
    end = n
    while end > 0:
        lo = max(end - L, 0)
        last = edges[np.searchsorted(edges, end - 1, side="right") - 1]  # start of last group
        cand = edges[(edges >= lo) & (edges < end)]
        start = int(cand[0]) if len(cand) else lo
        if start == last and lo < start:  # a single group: cut into the previous one
            start = lo
        out.append((start, end))
        if start == 0:
            break
        nxt = int(ends[np.searchsorted(edges, start, side="right") - 1])
        end = nxt if nxt < end else start
    return out


# ------------------------------------------------------------------------------------- model

@dataclass
class SasrecModel:
    net: _Net
    config: SasrecConfig
    n_items: int
    curve: list[tuple[int, float, float | None]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_recall: float | None = None
    epochs_run: int = 0
    train_seconds: float = 0.0
    stopped: str = ""

    def score(self, histories: Sequence[Sequence[int] | np.ndarray],
              ties: Sequence[Sequence[int] | np.ndarray | None] | None = None) -> np.ndarray:
        """float32 [len(histories), n_items]: the next-item scores of each history (catalogue
        rows, oldest first); ``ties`` optional tie ids per history (module docstring)."""
        cfg, L = self.config, self.config.max_len
        own = cfg.ties == "shuffle"
        out = np.empty((len(histories), self.n_items), dtype=np.float32)
        dev = torch.device(cfg.device)
        self.net.eval()
        with torch.inference_mode():
            cat = self.net.catalogue()
            for s in range(0, len(histories), cfg.eval_batch):
                wins = []
                for i in range(s, min(len(histories), s + cfg.eval_batch)):
                    h = _rows(histories[i], self.n_items)
                    g = _group_ranks(len(h), ties[i] if ties is not None else None)
                    wins.append((h[-L:], g[-L:]))
                items, grp, pos = _pack(wins, L, own)
                ti, tg, tp = (torch.from_numpy(a).to(dev) for a in (items, grp, pos))
                reps = self.net.group_reps(ti, tg, tp)
                last = tg.max(dim=1).values  # -1 for an empty history
                rep = reps[torch.arange(len(wins), device=dev), last.clamp(min=0)]
                rep = torch.where((last < 0)[:, None], self.net.start[None, :], rep)
                out[s:s + len(wins)] = (rep @ cat.T).float().cpu().numpy()
        return out

    def describe(self) -> dict:
        return {"config": asdict(self.config), "best_epoch": self.best_epoch,
                "best_val_recall@20": self.best_val_recall, "epochs_run": self.epochs_run,
                "train_seconds": round(self.train_seconds, 1), "stopped": self.stopped,
                "curve": [{"epoch": e, "train_loss": round(lo, 6),
                           "val_recall@20": None if v is None else round(v, 6)}
                          for e, lo, v in self.curve]}


def expected_recall(scores: np.ndarray, targets: np.ndarray,
                    exclude: Sequence[np.ndarray], k: int = 20) -> np.ndarray:
    """Per case P(rank <= k) with ties in score at their expected rank (target's own tie group:
    a uniformly random position); ``exclude[i]`` rows are removed (the target never is)."""
    out = np.empty(len(targets))
    for i, t in enumerate(targets.tolist()):
        sc = scores[i].astype(np.float64, copy=True)
        ex = exclude[i][exclude[i] != t]
        sc[ex] = -np.inf
        st = sc[t]
        greater = int((sc > st).sum())
        equal = int((sc == st).sum()) - 1
        out[i] = min(1.0, max(0.0, (k - greater) / (equal + 1)))
    return out


def _val_recall(model: SasrecModel, cases: Sequence[tuple], k: int = 20) -> float:
    hist = [c[0] for c in cases]
    ties = [c[2] if len(c) > 2 else None for c in cases]
    sc = model.score(hist, ties)
    tg = np.array([int(c[1]) for c in cases], dtype=np.int64)
    return float(expected_recall(sc, tg, [np.asarray(h, dtype=np.int64) for h in hist], k).mean())


def fit_sasrec(train_sequences: Sequence[Sequence[int] | np.ndarray],
               val_cases: Sequence[tuple], n_items: int, config: SasrecConfig | None = None,
               tie_groups: Sequence[Sequence[int] | np.ndarray] | None = None,
               log: bool = False) -> SasrecModel:
    """Train on ``train_sequences`` (per user, catalogue rows of the training item events in
    time order; ``tie_groups`` optional tie ids parallel to them), early-stopped on the mean
    expected Recall@20 of ``val_cases`` = ``(history rows, target row[, history tie ids])``
    with the history excluded.  Returns the best-validation weights (the last ones without
    validation cases)."""
    cfg = config or SasrecConfig()
    cfg.validate()
    if n_items < 1:
        raise DataError("sasrec needs a non-empty catalogue")
    if tie_groups is not None and len(tie_groups) != len(train_sequences):
        raise DataError("tie_groups must be parallel to train_sequences")
    threads = torch.get_num_threads()
    determ = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(cfg.threads)
    # on CUDA, cuBLAS needs CUBLAS_WORKSPACE_CONFIG for determinism: warn there, never fail
    torch.use_deterministic_algorithms(True, warn_only=cfg.device != "cpu")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return _fit(train_sequences, val_cases, n_items, cfg, tie_groups, log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(determ, warn_only=warn_only)


def _fit(train_sequences: Sequence[Sequence[int] | np.ndarray], val_cases: Sequence[tuple],
         n_items: int, cfg: SasrecConfig,
         tie_groups: Sequence[Sequence[int] | np.ndarray] | None, log: bool) -> SasrecModel:
    t0 = time.monotonic()
    L, own = cfg.max_len, cfg.ties == "shuffle"
    rng = np.random.default_rng(cfg.seed)
    dev = torch.device(cfg.device)
    # windows: (user, items, group ranks in the user's sequence, starts the sequence)
    wins: list[tuple[int, np.ndarray, np.ndarray, bool]] = []
    seen = []
    for u, seq in enumerate(train_sequences):
        rows = _rows(seq, n_items)
        grp = _group_ranks(len(rows), tie_groups[u] if tie_groups is not None else None)
        seen.append(np.unique(rows))
        for a, b in _windows(grp, L):
            wins.append((u, rows[a:b], grp[a:b], a == 0))
    if not wins:
        raise DataError("sasrec: no training events")
    net = _Net(n_items, cfg).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.98),
                           weight_decay=cfg.weight_decay)
    model = SasrecModel(net, cfg, n_items)
    best_state, bad = None, 0
    user_items = None
    if cfg.loss == "bce":
        user_items = np.zeros((len(train_sequences), n_items), dtype=bool)
        for u, rows_u in enumerate(seen):
            user_items[u, rows_u] = True
    for epoch in range(1, cfg.max_epochs + 1):
        net.train()
        order = rng.permutation(len(wins))
        total, count = 0.0, 0
        for s in range(0, len(order), cfg.batch):
            batch: list[tuple[np.ndarray, np.ndarray]] = []
            idx = order[s:s + cfg.batch].tolist()
            first = np.zeros((len(idx), L), dtype=bool)
            for r, w in enumerate(idx):
                _, it, g, is_start = wins[w]
                if own and len(it) > 1:  # a fresh random order inside each tie group
                    it = it[np.lexsort((rng.random(len(it)), g))]
                batch.append((it, g))
                if not is_start:  # the window's first tie group is context only
                    first[r, L - len(it):] = g == g[0]
            items, grp, pos = _pack(batch, L, own)
            # every other real token is a target: of the previous group's representation, or
            # of the start vector when it opens the user's sequence
            tmask = (items > 0) & ~first
            if not tmask.any():
                continue
            ti, tg, tp = (torch.from_numpy(a).to(dev) for a in (items, grp, pos))
            tm = torch.from_numpy(tmask).to(dev)
            reps = net.group_reps(ti, tg, tp)
            prev = reps.gather(1, (tg - 1).clamp(min=0)[..., None].expand_as(reps))
            prev = torch.where((tg == 0)[..., None], net.start.expand_as(prev), prev)
            rep = prev[tm]  # [N, d]
            target = ti[tm] - 1  # catalogue rows
            if cfg.loss == "ce":
                loss = F.cross_entropy(rep @ net.catalogue().T, target)
            else:
                assert user_items is not None
                users = np.repeat(np.array([wins[w][0] for w in idx]), tmask.sum(1))
                neg = rng.integers(0, n_items, len(users))
                for _ in range(20):  # rejection: negatives the user never touched in training
                    bad_neg = user_items[users, neg]
                    if not bad_neg.any():
                        break
                    neg[bad_neg] = rng.integers(0, n_items, int(bad_neg.sum()))
                cat = net.catalogue()
                pos_l = (rep * cat[target]).sum(-1)
                neg_l = (rep * cat[torch.from_numpy(neg).to(dev)]).sum(-1)
                loss = (F.binary_cross_entropy_with_logits(pos_l, torch.ones_like(pos_l))
                        + F.binary_cross_entropy_with_logits(neg_l, torch.zeros_like(neg_l)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            n = int(tm.sum())
            total += float(loss.detach()) * n
            count += n
        train_loss = total / max(count, 1)
        model.epochs_run = epoch
        val: float | None = None
        out_of_time = cfg.max_seconds is not None and time.monotonic() - t0 > cfg.max_seconds
        if val_cases and (epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs or out_of_time):
            val = _val_recall(model, val_cases)
            if model.best_val_recall is None or val > model.best_val_recall:
                model.best_val_recall, model.best_epoch, bad = val, epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad += 1
        elif not val_cases:
            model.best_epoch = epoch
        model.curve.append((epoch, train_loss, val))
        if log:
            print(f"sasrec epoch {epoch}: loss {train_loss:.4f}"
                  + (f", val recall@20 {val:.4f}" if val is not None else "")
                  + f" ({time.monotonic() - t0:.0f} s)", flush=True)
        if val_cases and bad >= cfg.patience:
            model.stopped = f"early stop: {cfg.patience} validations without improvement"
            break
        if out_of_time:
            model.stopped = f"time budget of {cfg.max_seconds} s"
            break
    else:
        model.stopped = f"max_epochs ({cfg.max_epochs})"
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    model.train_seconds = time.monotonic() - t0
    return model
