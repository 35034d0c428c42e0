"""Data sets and log files: the synthetic generator, MovieLens-100k, the Open Bandit Dataset,
off-policy evaluation reports, and the JSONL/CSV log reader (``logs``).  Imports only the core."""
