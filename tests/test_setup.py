"""`make setup` checks the disk before pip starts: a full disk halfway through torch's install is a page of
pip output; this is one line that says what to do."""
import re
import shutil
import subprocess

from retino_utils.paths import REPO_ROOT


def test_setup_refuses_in_one_line_where_the_disk_cannot_hold_a_new_venv(tmp_path):
    venv = tmp_path / ".venv"
    needed = shutil.disk_usage(tmp_path).free // 2**30 + 1000  # more than this disk has
    done = subprocess.run(["make", "-s", "setup", f"VENV={venv}", f"VENV_GB={needed}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    message = [line for line in done.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert len(message) == 1, done.stderr
    assert f"a new {venv} needs about {needed} GB of disk" in message[0]
    assert "make VENV=/path/.venv" in message[0]
    assert not venv.exists()  # nothing half-made to clean up
