"""``mdf labels import``, ``mdf train``, ``mdf models``, ``mdf promote``, ``mdf rollback``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from mdf.cli import SETTING_FLAGS
from mdf.errors import CommandError
from mdf.settings import Settings


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    labels = subparsers.add_parser("labels", help="ground-truth labels").add_subparsers(
        dest="labels_command", required=True
    )
    importer = labels.add_parser("import", help="import a labels CSV (image|study, label, ...)")
    importer.add_argument("file", type=Path)
    importer.set_defaults(handler=_labels_import)

    train = subparsers.add_parser("train", help="fine-tune, evaluate, promote if better")
    train.add_argument("--config", type=Path, help="YAML or JSON training configuration")
    train.add_argument("--epochs", type=int, help="overrides the configuration's epochs")
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="print the estimated GPU memory of the configured strategy for the 11B preset "
        "(per GPU with --nproc)",
    )
    train.add_argument(
        "--nproc",
        type=int,
        help="shard a full fine-tune over N processes (one per GPU) with FSDP: starts torchrun",
    )
    train.set_defaults(handler=_train)

    models = subparsers.add_parser("models", help="model versions, the promoted one marked")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=_models)

    promote = subparsers.add_parser("promote", help="serve a model version from the next chunk")
    promote.add_argument("version", help="version name")
    promote.add_argument("--reason", default="promoted by an operator")
    promote.set_defaults(handler=_promote)

    rollback = subparsers.add_parser("rollback", help="promote again the version replaced last")
    rollback.add_argument("--reason", default="rolled back by an operator")
    rollback.set_defaults(handler=_rollback)


def _sessions(settings: Settings) -> sessionmaker[Session]:
    from db.session import session_factory

    return session_factory(settings.resolved_database_url)


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """This ``mdf train`` command line for the processes torchrun starts (without --nproc;
    the root flags that override settings kept)."""
    argv = []
    for name in SETTING_FLAGS:
        if (value := getattr(args, name, None)) is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    argv.append("train")
    if args.config is not None:
        argv += ["--config", str(args.config)]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    return argv


def _train(args: argparse.Namespace, settings: Settings) -> int:
    import yaml

    from training.config import TrainConfig

    try:
        config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
        if args.epochs is not None:
            config = config.replaced(epochs=args.epochs)
        if args.nproc is not None:
            config = config.replaced(distributed="fsdp")
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise CommandError(f"{args.config}: {error}") from error
    if args.nproc is not None and args.nproc < 1:
        raise CommandError(f"--nproc {args.nproc}: needs at least one process")
    if args.dry_run:
        from training.memory import estimate, format_estimate

        print(format_estimate(estimate(config, gpus=args.nproc or 1)))
        return 0
    from training import distributed
    from training.run import train_and_evaluate

    if config.distributed == "fsdp" and args.nproc is None and not distributed.under_torchrun():
        raise CommandError(
            "distributed: fsdp runs in the processes torchrun starts: add --nproc N "
            "(one process per GPU), or start it with the README's torchrun line"
        )
    try:
        if distributed.under_torchrun():
            result = distributed.run_worker(config, settings)
            if result is None:  # not rank 0: rank 0 reports
                return 0
        elif args.nproc is not None:
            distributed.launch(args.nproc, _worker_argv(args))
            return 0  # rank 0 printed the result
        else:
            result = train_and_evaluate(config, settings)
    except (ValueError, distributed.RankFailed) as error:  # the run records why too
        raise CommandError(str(error)) from error
    print(f"run {result.run_id}: version {result.version} in {result.seconds:.0f} s")
    for name, scores in result.metrics.items():
        if "accuracy" not in scores:  # the referral thresholds: in the report
            continue
        print(f"  {name:<28} accuracy {scores['accuracy']:.3f}  macro F1 {scores['macro_f1']:.3f}")
    print(f"  {'promoted' if result.promoted else 'not promoted'}: {result.reason}")
    print(f"  report: {result.report}")
    return 0


def _labels_import(args: argparse.Namespace, settings: Settings) -> int:
    from training.labels import import_labels

    try:
        report = import_labels(args.file, _sessions(settings))
    except (OSError, ValueError) as error:  # no such file, or not a labels CSV
        raise CommandError(str(error)) from error
    print(f"{report.rows} rows, {report.images} images labelled, {len(report.unmatched)} unmatched")
    for line in report.unmatched:
        print(f"  {line}")
    return 0 if not report.unmatched else 1


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from db.models import ModelVersion

    with _sessions(settings)() as session:
        versions = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
        rows = [
            {
                "name": v.name,
                "promoted": v.is_promoted,
                "created_at": v.created_at.isoformat(),
                "preset": v.preset,
                "accuracy": (v.metrics or {}).get("accuracy"),
                "referral": v.referral,  # thresholds training set (training.referral)
                "path": v.path,
            }
            for v in versions
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"  {'name':<22}{'created':<21}{'accuracy':>9}  {'referral from':<24}path")
    for row in rows:
        mark = "*" if row["promoted"] else " "
        accuracy = f"{row['accuracy']:.3f}" if row["accuracy"] is not None else "-"
        chosen = (row["referral"] or {}).get("labels", {})
        referral = " ".join(f"{label}>={t['threshold']:.3f}" for label, t in chosen.items())
        print(
            f"{mark} {row['name']:<22}{row['created_at'][:19]:<21}{accuracy:>9}  "
            f"{referral or '-':<24}{row['path']}"
        )
    return 0


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from db.model_versions import promote
    from db.models import ModelVersion

    with _sessions(settings).begin() as session:
        version = session.scalar(select(ModelVersion).where(ModelVersion.name == args.version))
        if version is None:
            raise CommandError(f"no model version named {args.version!r}; see `mdf models`")
        try:
            promote(session, version, reason=args.reason)
        except ValueError as error:  # already promoted
            raise CommandError(str(error)) from error
    print(f"promoted {args.version}")
    return 0


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    from db.model_versions import rollback
    from db.models import ModelVersion

    with _sessions(settings).begin() as session:
        try:
            record = rollback(session, reason=args.reason)
        except ValueError as error:  # nothing promoted, or nothing before it
            raise CommandError(str(error)) from error
        name = session.get_one(ModelVersion, record.model_version_id).name
    print(f"rolled back to {name}")
    return 0
