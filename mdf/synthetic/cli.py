"""``mdf synth``: a synthetic night, written as a site delivers one."""

from __future__ import annotations

import argparse
from pathlib import Path

from mdf.errors import CommandError
from mdf.settings import Settings


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    synth = subparsers.add_parser("synth", help="write synthetic fundus images as a site would")
    synth.add_argument("directory", type=Path)
    synth.add_argument("-n", "--images", type=int, default=32)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=512)
    synth.add_argument("--dicom-fraction", type=float, default=0.5)
    synth.add_argument("--sources", default="synthetic", help="comma-separated source names")
    synth.add_argument(
        "--confound",
        type=float,
        default=0.0,
        help="fraction of patients whose source follows label",
    )
    synth.add_argument(
        "--with-text", type=float, default=1.0, help="fraction of patients with clinical text"
    )
    synth.add_argument(
        "--bad-files", action="store_true", help="add files intake must reject, under misc/"
    )
    synth.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace, settings: Settings) -> int:
    from mdf.synthetic.bad_files import write_bad_files
    from mdf.synthetic.delivery import MASKS_NAME, default_masks_dir, write_dataset

    try:
        out = write_dataset(
            args.directory,
            args.images,
            seed=args.seed,
            size=args.size,
            dicom_fraction=args.dicom_fraction,
            sources=tuple(s.strip() for s in args.sources.split(",") if s.strip()),
            confound=args.confound,
            with_text=args.with_text,
        )
    except ValueError as error:  # a count, size or fraction out of range
        raise CommandError(str(error)) from error
    print(
        f"{args.images} images in {out}, masks and labels in {default_masks_dir(out) / MASKS_NAME}"
    )
    if args.bad_files:
        bad = write_bad_files(out, size=args.size, seed=args.seed)
        print(f"{len(bad)} files intake must reject in {out / 'misc'}")
    return 0
