"""Benchmarks (``profiles bench ...``): the pipeline stages side by side (``pipeline``, with the
faust agents of ``faust_noop``) and the encoder (``encoder``).  Commands, not timed tests."""
