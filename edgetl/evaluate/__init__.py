"""`edgetl eval`: a run's model scored on a labelled folder (run.py)."""
