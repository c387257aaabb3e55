"""Evaluation tasks (zero-shot, retrieval, probes, baselines, compare), metrics and reports."""
