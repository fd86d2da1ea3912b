"""Evaluation against human part annotations: datasets, baselines, IoU protocol, reports."""
