"""The run record and the checkpoint, each declared once with a schema version: what training writes is what the
declaration reads back; files of an older version are read, files of a newer one or with other fields refused
in one line naming the file."""

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retino_utils.errors import RetinoError
from retino_utils.evaluation.record import RECORD_VERSION, RecordError, RunRecord, Scores, read_record
from retino_utils.evaluation.results import load_run
from retino_utils.train.checkpoint import CHECKPOINT_VERSION, Checkpoint, CheckpointDamaged, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_the_record_training_writes_reads_back_field_for_field(trained):
    written = json.loads((trained / "metrics.json").read_text())
    record = read_record(trained)
    assert written["schema_version"] == record.schema_version == RECORD_VERSION
    assert json.loads(json.dumps(record.to_dict())) == written
    assert set(written) == {field.name for field in dataclasses.fields(RunRecord)}
    assert record.figure("recall_2") == written["recall"][2] and record.interval("qwk") == written["intervals"]["qwk"]
    assert isinstance(record.validation, Scores) and record.screening.point("target") is not None


def test_a_record_from_before_versions_is_read_as_version_1(trained, tmp_path):
    older = shutil.copytree(trained, tmp_path / "older")
    values = json.loads((older / "metrics.json").read_text())
    del values["schema_version"]
    (older / "metrics.json").write_text(json.dumps(values))
    run = load_run(older)
    assert run.metrics.schema_version == 1 and run.metrics.qwk == values["qwk"]


@pytest.mark.parametrize("edit, message", [
    (lambda v: v.update(schema_version=RECORD_VERSION + 1),
     rf"written by a newer retino \(record version {RECORD_VERSION + 1}; this one reads versions 1-{RECORD_VERSION}\)"),
    (lambda v: v.update(kappa=0.3), r"is not a record retino wrote \(unknown fields kappa"),
    (lambda v: v.pop("best_epoch"), r"is not a record retino wrote \(missing best_epoch"),
    (lambda v: v["screening"].update(roc_auc=0.7), r"\(screening\) is not a record retino wrote \(unknown fields roc_auc"),
])
def test_a_record_retino_did_not_write_is_refused_naming_the_file(trained, tmp_path, edit, message):
    run = shutil.copytree(trained, tmp_path / "run")
    values = json.loads((run / "metrics.json").read_text())
    edit(values)
    (run / "metrics.json").write_text(json.dumps(values))
    with pytest.raises(RetinoError, match=message) as refused:
        load_run(run)
    assert str(run / "metrics.json") in str(refused.value) and "\n" not in str(refused.value)


def test_a_damaged_record_is_one_line(trained, tmp_path):
    run = shutil.copytree(trained, tmp_path / "run")
    (run / "metrics.json").write_text((run / "metrics.json").read_text()[:100])
    with pytest.raises(RecordError, match=r"metrics.json is damaged .*: score the run again"):
        read_record(run)


def test_a_checkpoint_reads_back_as_its_declaration_and_refuses_other_versions(trained, tmp_path):
    kept = load_checkpoint(trained / "best.pt")
    assert isinstance(kept, Checkpoint) and kept.schema_version == CHECKPOINT_VERSION
    raw = torch.load(trained / "best.pt", weights_only=True)
    assert set(raw) == {field.name for field in dataclasses.fields(Checkpoint)}

    older = {key: value for key, value in raw.items() if key != "schema_version"}
    torch.save(older, tmp_path / "older.pt")
    assert load_checkpoint(tmp_path / "older.pt").schema_version == 1

    torch.save({**raw, "schema_version": CHECKPOINT_VERSION + 1}, tmp_path / "newer.pt")
    with pytest.raises(RetinoError, match=rf"newer.pt was written by a newer retino \(checkpoint version "
                                          rf"{CHECKPOINT_VERSION + 1}.*update retino"):
        load_checkpoint(tmp_path / "newer.pt")
    torch.save({**raw, "optimiser": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointDamaged, match=r"other.pt is not a checkpoint retino wrote \(unknown fields optimiser"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save(raw["model"], tmp_path / "bare.pt")
    with pytest.raises(CheckpointDamaged, match="a bare dict|not a checkpoint retino wrote"):
        load_checkpoint(tmp_path / "bare.pt")


def test_predict_refuses_a_run_written_by_a_newer_version_in_one_line(trained, tiny_dataset, tmp_path):
    run = shutil.copytree(trained, tmp_path / "run")
    values = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**values, "schema_version": RECORD_VERSION + 1}))
    result = subprocess.run([sys.executable, "-m", "retino_utils.predict", str(run), str(tiny_dataset), "--out",
                             str(tmp_path / "grades.csv")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert re.fullmatch(r"error: .*metrics.json was written by a newer retino .*make setup\) to read it\n",
                        result.stderr), result.stderr


def test_the_record_keys_are_spelled_only_in_the_declaration():
    """Readers use RunRecord/Scores attributes; the JSON keys of the figures' groups appear in record.py alone."""
    pattern = re.compile(r"""["'](intervals|screening|operating_points)["']""")
    files = [*ROOT.glob("retino_utils/**/*.py"), *ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("benchmarks/*.py")]
    found = {str(path.relative_to(ROOT)) for path in files if pattern.search(path.read_text())}
    assert found == {"retino_utils/evaluation/record.py"}
