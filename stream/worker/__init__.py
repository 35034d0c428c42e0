"""The worker: what happens to a batch of records, and the state it changes.

No Kafka import here: records come in as :class:`~stream.worker.records.Record`, dead letters
leave through a :class:`~stream.worker.ports.DeadLetterSink`, and time comes from a
:class:`~stream.worker.ports.Clock`.  The Kafka layer (``stream.kafka``) provides the real ones;
``stream.worker.testing`` provides in-memory ones, so the whole pipeline runs in a unit test.
"""
