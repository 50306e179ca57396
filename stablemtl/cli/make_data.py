"""``stablemtl-make-data``: render a synthetic source into a Hugging Face ``datasets`` folder.

Example::

    stablemtl-make-data --profile street --n 5000 --out data/street --workers 2
    stablemtl-make-data --profile street --n 500 --out data/street_test_shift --split test --shift

Interrupt and rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import logging
import sys

from stablemtl.cli.help_format import DefaultsHelpFormatter
from stablemtl.data.generate import make_dataset
from stablemtl.data.profiles import SPLITS, get_profile, profile_names

DESCRIPTION = (
    "Render a synthetic source into a Hugging Face datasets folder (loadable with datasets.load_from_disk). "
    "Interrupt and rerun the same command to resume."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stablemtl-make-data", description=DESCRIPTION, formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--profile", required=True, help=f"source profile: {', '.join(profile_names())}")
    parser.add_argument("--n", type=int, required=True, help="number of rows")
    parser.add_argument("--out", required=True, help="output folder (datasets.load_from_disk-able)")
    parser.add_argument(
        "--split",
        default="train",
        choices=list(SPLITS),
        help="test and pretrain rows carry every label; each split is its own random stream",
    )
    parser.add_argument(
        "--shift", action="store_true", help="render the shifted test domain (textures, light, camera)"
    )
    parser.add_argument("--size", type=int, default=128, help="image height = width in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scene sampler (rows reproduce)")
    parser.add_argument("--workers", type=int, default=0, help="render processes (0: in this process)")
    parser.add_argument(
        "--shard_size", type=int, default=None, help="rows per resumable shard (default: the tool's choice)"
    )
    # The earlier dashed spelling keeps working, unadvertised.
    parser.add_argument("--shard-size", dest="shard_size", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        get_profile(args.profile)
        path = make_dataset(
            args.profile,
            args.n,
            args.out,
            size=args.size,
            split=args.split,
            shift=args.shift,
            seed=args.seed,
            workers=args.workers,
            shard_size=args.shard_size,
            progress=True,
        )
    except ValueError as err:
        print(f"stablemtl-make-data: error: {err}", file=sys.stderr)
        return 2
    domain = f"{args.split}, shifted" if args.shift else args.split
    print(f"wrote {args.n} rows of profile {args.profile!r} ({domain}) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
