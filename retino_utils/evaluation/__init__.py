"""Scoring a run: metrics, bootstrap intervals, screening operating points, calibration, eye fusion, Grad-CAM, and finished runs read back (results, model card)."""
