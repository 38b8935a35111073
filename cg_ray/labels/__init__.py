"""Auxiliary supervision: text features of label names (TLA) and scene labels."""
