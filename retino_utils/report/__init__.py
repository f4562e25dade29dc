"""The report: pipeline.yaml and its reader, the runner (python -m retino_utils.report), HTML and PDF, plots, and the notebooks' defaults."""
