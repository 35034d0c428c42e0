"""Operator tools: publish logs (``replay``), re-publish dead letters (``dlq``), recompute state
with another model (``rebuild``), the one-machine demo (``demo``) and worker child processes
(``runner``, also used by the benchmark and the tests)."""
