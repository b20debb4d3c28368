"""Evaluation package of ret2: benchmark formats (M-BEIR, M2KR), retrieval metrics and synthetic data."""
