"""Evaluation: the evaluators chosen by name (`evaluators.EVALUATORS`: zero-shot, retrieval,
probes, prompt tuning, baselines, compare), their inputs, metrics, figures and reports."""
