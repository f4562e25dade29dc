"""``python -m retino_utils.predict``."""

import sys

from retino_utils.errors import run_cli
from retino_utils.predict.predictor import main

run_cli(main, sys.argv[1:])
