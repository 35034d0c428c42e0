"""Fine-tuning and evaluating the encoder on a behaviour log (``profiles encoder ...``).

Imports the encoder runtime, the pure core (the stream's profile formula) and the log reader of
``stream.data``, nothing else of ``stream``.
"""
