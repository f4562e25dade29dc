"""Grading photos with a finished run (python -m retino_utils.predict), external validation, and Grad-CAM against the synthetic lesions."""
