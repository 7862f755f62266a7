"""Transports: each starts workers, runs batches, reports outcomes, kills and
shuts down. None of them holds policy; that is the scheduler's (``_core``)."""
