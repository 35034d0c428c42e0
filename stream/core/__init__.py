"""The pure core: no Kafka, torch, FAISS, aiohttp or prometheus; stdlib, numpy and orjson only.

Event schema and validation (``events``), the event-type table (``eventtypes``), profile math
(``profile``), bandit counts (``bandit``) and policies (``policies``), off-policy estimators
(``ope``), the micro-batcher (``batcher``), the rate cap (``ratelimit``), the dedupe window
(``dedupe``) and the exception tree (``errors``).  Everything here is unit-tested against
plain-numpy oracles.
"""
