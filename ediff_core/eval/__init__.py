"""Evaluation: Shapes World text-image alignment (alignment.py)."""
