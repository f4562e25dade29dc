"""Everything a training run writes, in one place: config, checkpoints, history, predictions, metrics, events.

The checkpoint is the source of truth: ``history.csv`` is rewritten from it on every start, so a
crash between the two files never loses a row. ``events.jsonl`` (see ``events``) is what the report
follows while a notebook trains. Only the main process writes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from retino_utils.atomic import remove_stale_temp_files, write_json, write_text
from retino_utils.errors import DiskFullError, RetinoError
from retino_utils.evaluation.model_card import write_model_card
from retino_utils.evaluation.record import RECORD_FILE, RunRecord
from retino_utils.train.checkpoint import Checkpoint, CheckpointDamaged, load_checkpoint, save_checkpoint
from retino_utils.train.config import TrainConfig, load_config, save_config
from retino_utils.train.events import append_event
from retino_utils.train.run_safety import setting_changes, write_fingerprint

SCORED_SPLITS = ("val", "test")  # every epoch scores both: validation picks, test is only drawn
HISTORY_FIGURES = {"loss": "loss", "acc": "accuracy", "qwk": "qwk", "macro_f1": "macro_f1"}  # column -> Scores field
HISTORY_COLUMNS = ["epoch", "phase", "image_size", "lr", "train_loss", "train_acc",
                   *(f"{split}_{column}" for split in SCORED_SPLITS for column in HISTORY_FIGURES),
                   "seconds", "images_per_s"]


class RunFolder:
    def __init__(self, out: str | Path, writes: bool = True):
        self.out = Path(out)
        self.writes = writes
        self.last, self.best = self.out / "last.pt", self.out / "best.pt"

    # -- reading back ---------------------------------------------------------------------------
    def resume_state(self, config: TrainConfig, fingerprint: str) -> Checkpoint | None:
        """The state to continue from, or None for a fresh run; refuses what would mix two runs: other
        settings, or the same settings on data whose labels or photos changed (``fingerprint``)."""
        if not self.last.exists():
            return None
        if not config.resume:
            raise RetinoError(f"{self.out} already holds a training run: pass --resume to continue or reuse it, "
                              f"or choose another --out")
        state = self._read_last()
        trained = TrainConfig.from_dict(state.config)
        changed = setting_changes(trained, config)
        if changed:
            raise RetinoError(f"{self.out} holds a run with another config ({'; '.join(changed)}): choose another "
                              f"--out for these settings, or {self._continue_advice(trained)}")
        recorded = state.data_fingerprint
        if recorded is not None and recorded != fingerprint:
            raise RetinoError(f"{self.out} holds a run trained on other data: {config.data} has changed since "
                              f"(fingerprint {recorded} -> {fingerprint}: labels or photos edited); its results "
                              f"do not describe these photos: choose another --out, or move {self.out} aside")
        return state

    def _continue_advice(self, trained: TrainConfig) -> str:
        """How to continue the run with its own settings: its config.yaml, unless that was edited since."""
        command = f"python -m retino_utils.train --config {self.out / 'config.yaml'} --resume"
        try:
            edited = bool(setting_changes(trained, load_config(self.out / "config.yaml")))
        except RetinoError:  # unreadable: edited too
            edited = True
        if edited:
            return (f"continue that run with its own settings: put the values before the arrows back into "
                    f"{self.out / 'config.yaml'} (edited since it trained), then {command}")
        return f"continue that run with its own settings: {command}"

    def _read_last(self) -> Checkpoint:
        """``last.pt``; when it is damaged, say what can be kept (an intact ``best.pt`` is a full checkpoint)."""
        try:
            return load_checkpoint(self.last)
        except CheckpointDamaged as damaged:
            try:
                epoch = load_checkpoint(self.best).epoch if self.best.is_file() else None
            except CheckpointDamaged:
                epoch = None
            if epoch is None:
                raise RetinoError(f"{damaged}, and there is no intact best.pt beside it: no epoch of this run can "
                                  f"be recovered; move {self.out} aside and train again") from None
            raise RetinoError(f"{damaged}; best.pt (after epoch {epoch}) is intact and is kept: to continue from "
                              f"it, mv {self.last} {self.last}.damaged && cp {self.best} {self.last}, then rerun "
                              f"with --resume (the epochs after {epoch} are trained again)") from None

    def best_state(self) -> Checkpoint:
        return load_checkpoint(self.best)

    def is_finished(self, state: Checkpoint | None, epochs: int) -> bool:
        return state is not None and state.epoch >= epochs and (self.out / RECORD_FILE).is_file()

    # -- writing -------------------------------------------------------------------------------
    def start(self, state: Checkpoint | None) -> None:
        """Clear what a killed run left, and bring the history in line with the checkpoint."""
        if not self.writes:
            return
        remove_stale_temp_files(self.out)
        if state is not None:
            self.write_history(state.history)

    def write_config(self, config: TrainConfig, fingerprint: str) -> None:
        if self.writes:
            save_config(config, self.out / "config.yaml")
            write_fingerprint(self.out, config, fingerprint)

    def save_epoch(self, state: Checkpoint, improved: bool) -> None:
        """``best.pt`` (when improved), ``last.pt``, then the history; a full disk keeps the last epoch."""
        if not self.writes:
            return
        try:
            if improved:
                save_checkpoint(state, self.best)
            save_checkpoint(state, self.last)
        except DiskFullError as full:
            epoch = state.epoch
            kept = f"last.pt still holds epoch {epoch - 1}" if epoch > 1 else "no epoch was saved yet"
            raise DiskFullError(f"{full}; {kept}: free some space, then continue with --resume "
                                f"(it restarts after the last complete epoch)") from None
        self.write_history(state.history)

    def write_history(self, history: list[dict]) -> None:
        write_text(self.out / "history.csv", history_frame(history).to_csv(index=False))

    def finish(self, predictions: pd.DataFrame, record: RunRecord) -> None:
        if self.writes:
            write_text(self.out / "predictions.csv", predictions.to_csv(index=False, float_format="%.6f"))
            write_json(self.out / RECORD_FILE, record.to_dict())
            write_model_card(self.out)

    def event(self, kind: str, **payload) -> None:
        """Append one event line for whoever follows the run (see ``events``)."""
        if self.writes:
            append_event(self.out, kind, **payload)


def history_frame(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(history, columns=HISTORY_COLUMNS)
