"""Offline evaluation and training on behaviour logs (layer ``stream.eval``).

- ``profiles eval`` (``run``): every method side by side on one per-user time split, replayed as
  a stream (``data``, ``replay``, ``metrics``, ``baselines``, ``hybrid_eval``; SASRec in
  ``sasrec``), with paired-bootstrap CIs; ``--cold-only`` (the short-history / cold-item run
  alone) and ``--interests`` (single vector vs multi-interest with diversity:
  ``interests_eval``, ``diversity``);
- ``profiles ranker train|eval`` (``ranker_cmd``, ``rankers``): the CTR ranker on the hybrid's
  candidates of the validation split;
- ``profiles ranker eval-obd`` (``obd_ctr``): click prediction on the Open Bandit Dataset.

May import ``stream.core``, ``stream.settings``, ``stream.data``, ``encoder``,
``encoder.training`` and ``index``; ``stream.cli`` imports it.
"""
