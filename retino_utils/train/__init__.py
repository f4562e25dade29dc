"""Training a run: its settings (TrainConfig), devices and precision, loaders, optimiser, the epoch engine, the run folder and its safety, the trainer, and the CLI (python -m retino_utils.train)."""
