"""``python -m retino_utils.report``."""

import sys

from retino_utils.errors import run_cli
from retino_utils.report.runner import main

run_cli(main, sys.argv[1:])
