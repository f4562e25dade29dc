from ..errors import run_cli
from .dataset import main

run_cli(main)
