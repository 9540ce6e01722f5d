"""Evaluation: editing metrics (editing.py), the scoring engine (engine.py), downstream tasks (tasks/)."""
