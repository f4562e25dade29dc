from retino_utils.errors import run_cli
from retino_utils.synthetic.generate import main

run_cli(main)
