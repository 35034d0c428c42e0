"""Fine-tune the sentence encoder on behaviour: contrastive, in-batch negatives.

Objective (matches how the stream uses the encoder): for a training event j of a user, the
*context* is the user's profile just before j, built with the stream's formula (event-type
weights x half-life decay, over the user's last ``max_context`` events) from item vectors of the
current model; the *target* is the text of item j.  Loss: softmax cross-entropy of
``profile . item / temperature`` over the batch's distinct target items (in-batch negatives;
items already in the user's history are masked out, as at evaluation), each example weighted
by its event type's profile weight (engagement).  Item vectors of the context come from a cache
of the whole text table that is re-encoded at every validation (the catalogue is small and
encoding it is cheap), so gradients flow through the target side; the same weights make both
sides, so the context follows.

logQ correction (``FinetuneConfig.logq``, ``--logq/--no-logq``): in-batch negatives are drawn
with the data's item frequency, so a popular item is a negative far more often than under a full
softmax and the plain loss pushes popular items down.  Following Yi et al. 2019
("Sampling-bias-corrected neural modeling for large corpus item recommendations", RecSys), every
in-batch logit becomes ``s(u, i) - log p_i`` (after the temperature), where ``p_i`` is the
probability that item ``i`` is a column of a batch, estimated on the stream of batches by
``ItemFrequency`` (the paper's hashed arrays A = last step seen, B = estimated step gap,
``p = 1 / B``).  Nothing changes at serving time: the correction only shapes the training loss.

Early stopping: validation Recall@20 (``encoder.training.evaluate.val_recall``) every ``eval_every`` steps,
from step 0 (the untuned model); the best weights are saved; ``patience`` evaluations without
improvement stop training.  Test events are never read (the split holds them out per user).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from encoder.training.logdata import LogData, Split, load_log
from stream.core.eventtypes import DEFAULT_WEIGHTS
from stream.core.profile import DEFAULT_HALF_LIFE_MS, ProfileParams


@dataclass
class FinetuneConfig:
    epochs: int = 1
    batch_size: int = 128
    lr: float = 5e-5
    max_steps: int | None = None
    device: str = "auto"
    seed: int = 42
    eval_every: int = 25
    patience: int = 4
    temperature: float = 0.05
    val_frac: float = 0.1
    test_frac: float = 0.1
    max_context: int = 200
    warmup_frac: float = 0.1
    weight_decay: float = 0.01
    keep_best: bool = True  # save the best-validation weights (False: the last ones)
    half_life_ms: float = DEFAULT_HALF_LIFE_MS
    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    logq: bool = True  # subtract log(streaming in-batch frequency) from the logits (chosen by
    # measurement on MovieLens-100k, README "logQ correction")
    logq_alpha: float = 0.01  # ItemFrequency step size (the paper's alpha)


class ItemFrequency:
    """Streaming estimate of how often an item is a column of a training batch (Yi et al. 2019,
    Algorithm 2): hashed arrays ``A`` (the last step a bucket was seen) and ``B`` (an
    exponential moving average, step size ``alpha``, of the number of steps between two
    sightings).  ``p = 1 / B``: for an item that is in a batch with probability ``p`` at every
    step the step gap is geometric with mean ``1 / p``.

    Choices, documented:

    - **A/B gap estimator, not an exponentially decayed count**: it needs no decay constant tied
      to the batch size, and a sighting updates only that item's two cells (O(batch) per step).
    - **Buckets**: ``bucket = id % n_buckets`` over dense integer ids (catalogue rows).  With at
      least one bucket per row, as in ``finetune``, this is collision-free; with
      fewer buckets colliding items share a cell and their ``p`` is over-estimated (the paper's
      trade-off for an unbounded vocabulary).
    - **Distinct items per step**: ``update`` takes the batch's distinct items (duplicates in a
      batch share one column of the in-batch softmax), so ``p`` estimates
      P(item is in a batch) = 1 - (1 - q)^batch, the probability that matters for the columns.
    - **Start**: ``A = 0`` (the step before training; the first gap is the steps to the first
      sighting, itself geometric with mean ``1 / p``) and ``B = 0``, bias-corrected like Adam's
      moments: ``B / (1 - (1 - alpha)^n)`` after ``n`` sightings, so the estimate is a proper
      (recency-weighted) mean of the gaps from the first sighting on, not pulled towards 0.
      A bucket never seen reads ``1 / max(1, last step)`` (at most once so far).
    """

    def __init__(self, n_buckets: int, alpha: float = 0.01) -> None:
        if n_buckets < 1 or not 0 < alpha <= 1:
            raise ValueError(f"need n_buckets >= 1 and 0 < alpha <= 1; got {n_buckets}, {alpha}")
        self.n_buckets, self.alpha = int(n_buckets), float(alpha)
        self.last = np.zeros(self.n_buckets, dtype=np.int64)  # A
        self.gap = np.zeros(self.n_buckets, dtype=np.float64)  # B (before bias correction)
        self.seen = np.zeros(self.n_buckets, dtype=np.int64)  # sightings (bias correction)
        self.step = 0

    def bucket(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) % self.n_buckets

    def update(self, ids: np.ndarray, step: int) -> None:
        """Record that ``ids`` were in the batch of training step ``step`` (1, 2, ...; increasing)."""
        h = np.unique(self.bucket(ids))
        self.gap[h] = (1.0 - self.alpha) * self.gap[h] + self.alpha * (step - self.last[h])
        self.last[h] = step
        self.seen[h] += 1
        self.step = max(self.step, int(step))

    def prob(self, ids: np.ndarray) -> np.ndarray:
        """Estimated P(in a batch) of ``ids``, in (0, 1]."""
        h = self.bucket(ids)
        n = self.seen[h]
        debias = 1.0 - (1.0 - self.alpha) ** np.maximum(n, 1)
        gap = np.where(n > 0, self.gap[h] / debias, float(max(1, self.step)))
        return 1.0 / np.maximum(gap, 1.0)


def training_examples(log: LogData, sp: Split) -> np.ndarray:
    """[n, 2] (user index, event index) of train item events that have a train context."""
    out = []
    for ui, u in enumerate(log.users):
        end = sp.val_start[u.user]
        js = np.flatnonzero(u.is_item[:end])
        js = js[js >= 1]
        out.append(np.stack([np.full(len(js), ui), js], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


class _Contexts:
    """Profiles of training contexts from cached text-table vectors (stream formula)."""

    def __init__(self, log: LogData, params: ProfileParams, max_context: int) -> None:
        self.log, self.max_context = log, max_context
        self.inv_h = 1.0 / params.half_life_ms
        self.w = [params.weight_array(u.types) for u in log.users]

    def __call__(self, ex: np.ndarray, cache: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ex), cache.shape[1]), dtype=np.float32)
        for k, (ui, j) in enumerate(ex.tolist()):
            u = self.log.users[ui]
            lo = max(0, j - self.max_context)
            coef = self.w[ui][lo:j] * np.exp2((u.ts[lo:j] - u.ts[j - 1]) * self.inv_h)
            v = coef @ cache[u.rows[lo:j]]
            n = np.linalg.norm(v)
            if n > 0:
                out[k] = v / n
        return out


def inbatch_loss(logits: Any, target: Any, weight: Any, mask: Any, log_p: Any = None):
    """Weighted softmax cross-entropy over in-batch columns (torch tensors).

    ``logits`` [n, m] (already divided by the temperature), ``target`` [n] column of each row's
    positive, ``weight`` [n], ``mask`` [n, m] bool (True: not a negative for that row), ``log_p``
    [m] or None: the logQ correction, ``logits - log_p`` for every column (the positive too, as in
    Yi et al. 2019), before masking.
    """
    import torch

    if log_p is not None:
        logits = logits - log_p.unsqueeze(0)
    logits = logits.masked_fill(mask, float("-inf"))
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    return (ce * weight).sum() / weight.sum().clamp(min=1e-9)


def batch_loss(model: Any, tok: Any, log: LogData, batch: np.ndarray, q: np.ndarray,
               hist: list[set[int]], tw: list[np.ndarray], temperature: float, max_length: int,
               freq: ItemFrequency | None = None):
    """Weighted in-batch InfoNCE of context profiles ``q`` against the batch's target items;
    with ``freq``, logQ-corrected by its estimated in-batch probabilities."""
    import torch

    dev = next(model.parameters()).device
    rows = np.array([log.users[ui].rows[j] for ui, j in batch.tolist()])
    uniq, inv = np.unique(rows, return_inverse=True)
    # Items already in the user's history are no negatives (they are excluded at evaluation).
    mask = np.zeros((len(batch), len(uniq)), dtype=bool)
    for r, (ui, _) in enumerate(batch.tolist()):
        h = hist[ui]
        mask[r] = [c != inv[r] and int(x) in h for c, x in enumerate(uniq)]
    w = torch.tensor([tw[ui][j] for ui, j in batch.tolist()], dtype=torch.float32, device=dev)
    t = embed(model, tok, [log.texts[r] for r in uniq.tolist()], dev, max_length)
    logits = torch.from_numpy(q).to(dev) @ t.T / temperature
    log_p = None
    if freq is not None:
        log_p = torch.from_numpy(np.log(freq.prob(uniq))).to(dev, torch.float32)
    return inbatch_loss(logits, torch.from_numpy(inv).to(dev), w, torch.from_numpy(mask).to(dev),
                        log_p)


def embed(model: Any, tokenizer: Any, texts: list[str], device: Any, max_length: int):
    """Mean-pooled, L2-normalised embeddings with gradients (same pooling as TransformerEncoder)."""
    import torch

    tok = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt", return_token_type_ids=False)
    ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden = hidden.float()
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def finetune(events: Path | str, items: Path | str, out: Path | str, cfg: FinetuneConfig,
             base: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, keep the best validation weights, write a self-describing model directory to
    ``out``; returns its metadata."""
    import torch
    from tqdm import tqdm

    from encoder.metadata import save_model_dir
    from encoder.training.evaluate import val_recall
    from encoder.transformer import TransformerEncoder, _hash_file

    t_start = time.monotonic()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    log = load_log(events, items)
    sp = log.split(cfg.val_frac, cfg.test_frac)
    params = ProfileParams(cfg.half_life_ms, cfg.event_weights)
    enc = TransformerEncoder(base, device=cfg.device)
    model, tok, dev = enc.model, enc.tokenizer, enc.device
    base_folder = enc.weights_path.parent
    ex = training_examples(log, sp)
    if len(ex) == 0:
        raise ValueError("no training examples: every user needs >= 2 train item events")
    per_epoch = math.ceil(len(ex) / cfg.batch_size)
    total = cfg.epochs * per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * per_epoch)
    order = np.concatenate([rng.permutation(len(ex)) for _ in range(cfg.epochs)])
    contexts = _Contexts(log, params, cfg.max_context)
    hist = [set(u.rows[u.is_item].tolist()) for u in log.users]  # superset of "before j": masks
    tw = [params.weight_array(u.types) for u in log.users]
    # One bucket per catalogue row: collision-free (rows are dense, 0 .. n_items - 1).
    freq = ItemFrequency(log.n_items, cfg.logq_alpha) if cfg.logq else None

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_frac * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))

    def refresh() -> np.ndarray:
        model.eval()
        v = enc.encode(log.texts)
        model.train()
        return v

    cache = refresh()
    base_val = best_val = val_recall(log, sp, cache, params)
    best_step, best_state, bad, stopped = 0, None, 0, False
    history = [{"step": 0, "val_recall@20": base_val}]
    show = progress and sys.stderr.isatty()
    print(f"finetune: {len(ex)} train examples, {total} steps of {cfg.batch_size}; "
          f"val Recall@20 untuned {base_val:.4f}", file=sys.stderr, flush=True)
    bar = tqdm(total=total, unit="step", desc="finetune", file=sys.stderr, disable=not show)
    ema, step, losses = None, 0, []
    for step in range(1, total + 1):
        batch = ex[order[(step - 1) * cfg.batch_size : step * cfg.batch_size]]
        q = contexts(batch, cache)
        keep = np.linalg.norm(q, axis=1) > 0
        batch, q = batch[keep], q[keep]
        if len(batch) < 2:
            continue
        if freq is not None:  # update first: every column of this batch has been seen
            freq.update(np.array([log.users[ui].rows[j] for ui, j in batch.tolist()]), step)
        loss = batch_loss(model, tok, log, batch, q, hist, tw, cfg.temperature, enc.max_length,
                          freq)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        bar.update(1)
        losses.append(float(loss.item()))
        bar.set_postfix(loss=f"{ema:.4f}", best_val=f"{best_val:.4f}")
        if step % cfg.eval_every == 0 or step == total:
            cache = refresh()
            val = val_recall(log, sp, cache, params)
            history.append({"step": step, "val_recall@20": val, "loss_ema": ema})
            print(f"finetune: step {step}/{total} loss {ema:.4f} val Recall@20 {val:.4f}",
                  file=sys.stderr, flush=True)
            if val > best_val:
                best_val, best_step, bad = val, step, 0
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience:
                    stopped = True
                    break
    bar.close()
    if best_state is not None and cfg.keep_best:
        model.load_state_dict(best_state)
    model.eval()

    n_split = {p: len(log.ids_of(sp, p)) for p in ("train", "val", "test")}
    meta = {
        "base_model": {"name": "all-MiniLM-L6-v2" if base is None else Path(base).name,
                       "path": str(base_folder), "sha256": _hash_file(enc.weights_path),
                       "fingerprint": enc.model_fingerprint},
        "training_data": {"fingerprint": log.fingerprint, "events_file": Path(events).name,
                          "items_file": Path(items).name, "users": len(log.users),
                          "items": log.n_items, "events": n_split, "split": sp.params()},
        "hyperparameters": {**asdict(cfg), "objective": "in-batch InfoNCE: stream-formula profile "
                            "of the user's previous events -> next item text"
                            + (", logQ-corrected (s - log p, streaming in-batch frequency)"
                               if cfg.logq else "")},
        "logq": {"enabled": cfg.logq,
                 "estimator": "Yi et al. 2019 streaming frequency (A = last step, B = EMA of the "
                              "step gap, p = 1/B, bias-corrected), one bucket per catalogue row",
                 "alpha": cfg.logq_alpha, "buckets": log.n_items if cfg.logq else None},
        "validation": {"metric": "recall@20", "untuned": base_val, "best": best_val,
                       "best_step": best_step, "steps_run": step, "stopped_early": stopped,
                       "history": history},
        "training": {"seconds": round(time.monotonic() - t_start, 1), "device": str(dev),
                     "torch": torch.__version__, "train_examples": int(len(ex)),
                     "loss_first": losses[0] if losses else None,
                     "loss_last": losses[-1] if losses else None},
    }
    return save_model_dir(model, tok, base_folder, out, meta, enc.max_length)
