"""Evaluation and calibration: error rates of the pipeline on labelled photos (``visage eval``)."""
