"""Datasets: the demo corpus, reading user files, cleaning and splitting (no heavy imports)."""
