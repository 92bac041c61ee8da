"""`python -m worker`: one worker that claims and runs jobs (the same as `openseek-nanochat worker`)."""

import argparse
import sys

from worker.cli import command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m worker", description=command.help)
    command.add_arguments(parser)
    sys.exit(command.run(parser.parse_args()))
