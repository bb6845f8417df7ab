"""``python -m dyntta.train {recognizer,enhancer}``."""

from __future__ import annotations

import argparse
import sys

from dyntta.data import DatasetNotFoundError
from dyntta.train import recognizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dyntta.train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    recognizer.add_arguments(commands.add_parser("recognizer", help="train an image classifier"))
    args = parser.parse_args(argv)
    try:
        if args.command == "recognizer":
            recognizer.run(args)
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
