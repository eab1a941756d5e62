"""Command-line interface: parses arguments and calls the public API; CoopposeError -> message, exit 2."""

from __future__ import annotations

import argparse
import sys

from cooppose.errors import CoopposeError


def _add_onboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("onboard", help="render and cache the templates of a mesh")
    p.add_argument("mesh", help="mesh file (PLY/OBJ/GLB)")
    p.add_argument("--units", default="mm", choices=["mm", "m"], help="units of the mesh file")
    p.add_argument("--cache-dir", default=None, help="template cache folder (default ~/.cache/cooppose)")

    def run(args: argparse.Namespace) -> int:
        from cooppose.objects import load_mesh
        from cooppose.onboarding import onboard

        templates = onboard(load_mesh(args.mesh, units=args.units), cache_dir=args.cache_dir, progress=True)
        print(f"{len(templates.poses)} templates in {templates.cache_path}")
        return 0

    p.set_defaults(func=run)


COMMANDS = [_add_onboard]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="cooppose", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cooppose` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CoopposeError as err:
        print(f"cooppose {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
