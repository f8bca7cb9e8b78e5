"""Evaluation and outputs of a trained avatar: metrics protocols, rendering of frame lists, videos."""
