"""Accuracy evaluation on real models and text: assets, tasks, scoring, baselines, report."""
