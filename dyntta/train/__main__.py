"""``python -m dyntta.train {recognizer,enhancer}``, in one process or under ``torchrun`` (data-parallel)."""

from __future__ import annotations

import sys

from PIL import UnidentifiedImageError

from dyntta import cli, distributed
from dyntta.cli import ArgumentParser
from dyntta.data import DatasetNotFoundError
from dyntta.train import enhancer, recognizer


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m dyntta.train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    recognizer.add_arguments(commands.add_parser("recognizer", help="train an image classifier"))
    enhancer.add_arguments(commands.add_parser("enhancer", help="fit a DynTTA enhancer for a frozen recognizer"))
    args = parser.parse_args(argv)
    try:
        distributed.init_from_env(args.device)  # a no-op unless launched by torchrun
        {"recognizer": recognizer.run, "enhancer": enhancer.run}[args.command](args)
    except (DatasetNotFoundError, UnidentifiedImageError, ValueError) as error:
        # dyntta.cli's rule, 2 = usage error: the data folder named on the command line is missing, empty,
        # has one class or a file that is not an image, or a value does not fit the data; all are found
        # while loading, before any training
        print(f"error: {error}", file=sys.stderr)
        return cli.EXIT_USAGE
    except OSError as error:
        # 1 = runtime failure: an I/O error while running (a truncated image file, a full disk)
        print(f"error: {error}", file=sys.stderr)
        return cli.EXIT_FAILURE
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
