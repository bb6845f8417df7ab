"""``python -m dyntta.train {recognizer,enhancer}``, in one process or under ``torchrun`` (data-parallel)."""

from __future__ import annotations

import argparse
import sys

from dyntta import distributed
from dyntta.data import DatasetNotFoundError
from dyntta.train import enhancer, recognizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dyntta.train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    recognizer.add_arguments(commands.add_parser("recognizer", help="train an image classifier"))
    enhancer.add_arguments(commands.add_parser("enhancer", help="fit a DynTTA enhancer for a frozen recognizer"))
    args = parser.parse_args(argv)
    try:
        distributed.init_from_env(args.device)  # a no-op unless launched by torchrun
        {"recognizer": recognizer.run, "enhancer": enhancer.run}[args.command](args)
    except (DatasetNotFoundError, OSError, ValueError) as error:
        # OSError covers an image file PIL cannot read (UnidentifiedImageError, a truncated JPEG)
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
