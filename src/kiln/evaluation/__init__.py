"""`kiln eval`: rebuild a model from a checkpoint, infer once, write the report (report.py)."""
