"""Runs the dev-cluster command line: `python -m maas_devcluster up|down|status`."""

import sys

from maas_devcluster.cli import main

sys.exit(main(program="python -m maas_devcluster"))
