"""``python -m retino_utils.train``: Ctrl-C prints the command that continues the run."""

import sys

from retino_utils.errors import run_cli
from retino_utils.train.cli import main, resume_command

run_cli(main, sys.argv[1:], on_interrupt=lambda: f"continue with: {resume_command(sys.argv[1:])}")
