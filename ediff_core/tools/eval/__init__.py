"""Evaluation: Shapes World alignment (alignment.py), paint and style control (control.py), the paper's
findings (paper_*.py), over the types they share (suite.py)."""
