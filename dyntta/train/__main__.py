"""``python -m dyntta.train {recognizer,enhancer}``."""

from __future__ import annotations

import argparse
import sys

from dyntta.data import DatasetNotFoundError
from dyntta.train import enhancer, recognizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dyntta.train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    recognizer.add_arguments(commands.add_parser("recognizer", help="train an image classifier"))
    enhancer.add_arguments(commands.add_parser("enhancer", help="fit a DynTTA enhancer for a frozen recognizer"))
    args = parser.parse_args(argv)
    try:
        {"recognizer": recognizer.run, "enhancer": enhancer.run}[args.command](args)
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
