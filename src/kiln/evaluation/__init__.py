"""Evaluation: metrics from logits (metrics.py), figures (plots.py), the report (report.py)."""
