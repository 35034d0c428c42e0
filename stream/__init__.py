"""realtime-profiles: Kafka events -> faust -> transformer encoder -> FAISS, with bandit counts.

One folder per layer; imports only point down (``tests/unit/test_layers.py`` checks it):

- ``core/``     pure logic (events, event types, profiles, bandit, policies, OPE, batcher, ...)
- ``settings``  the one settings object, the only reader of the environment
- ``data/``     data sets and log files (generator, MovieLens, OBD, OPE reports, log readers)
- ``worker/``   the per-batch pipeline and its state, snapshots, catalogue, metrics; no Kafka
- ``kafka/``    the only place that imports faust, aiokafka or kafka-python
- ``serve/``    HTTP routes and the queries behind them; no Kafka
- ``tools/``    replay, dead-letter replay, rebuild, demo, worker processes
- ``bench/``    benchmarks
- ``service``   the composition root: builds encoder, pipeline, Kafka app and HTTP
- ``cli``       the one command line, ``profiles``
"""
