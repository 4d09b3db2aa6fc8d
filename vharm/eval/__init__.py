"""Evaluation: metrics, test sets, the methods compared, scoring and the report."""
