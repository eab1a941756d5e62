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


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="estimate every target of a BOP dataset (resumable, shardable) and score it")
    p.add_argument("--dataset", required=True, help="BOP dataset folder (with test_targets_bop19.json)")
    p.add_argument("--split", default="test", help="split folder (default test)")
    p.add_argument("--mode", default="rgb", choices=["rgb", "rgbd"], help="use depth (rgbd) or not")
    p.add_argument("--hypotheses", type=int, default=1, help="pose hypotheses per detection (best one is written)")
    p.add_argument("--stage", default="select", choices=["coarse", "refine", "select"], help="last Co-op stage to run")
    p.add_argument("--detections", default=None, help="BOP detections JSON (default: ground-truth bbox_visib boxes)")
    p.add_argument("--method", default="coop", choices=["coop", "sift", "fpfh"], help="estimator (sift, fpfh: classical baselines)")
    p.add_argument("--name", default=None, help="method name in the results file (default: --method; no '_')")
    p.add_argument("--images-every", type=int, default=1, help="evaluate every N-th image only")
    p.add_argument("--shard", default=None, help="I/N: run shard I of N (default: torchrun RANK/WORLD_SIZE, else 0/1)")
    p.add_argument("--checkpoints", default=None, help="checkpoint folder of the Co-op networks (default: shipped)")
    p.add_argument("--out", required=True, help="output folder (journal, results CSV, scores.json, scores.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        from cooppose.eval.runner import make_estimator, parse_shard, run_eval

        kwargs = {"checkpoints": args.checkpoints, "stage": args.stage} if args.method == "coop" else {}
        scores = run_eval(
            args.dataset, args.out, make_estimator(args.method, **kwargs), split=args.split, mode=args.mode,
            n_hypotheses=args.hypotheses, detections=args.detections, images_every=args.images_every,
            shard=parse_shard(args.shard) if args.shard else None, method_name=args.name or args.method,
            progress=not args.no_progress, settings=kwargs,
        )
        if scores is None:
            print(f"shard done; the scores are written when the last shard of {args.out} finishes")
        else:
            print(open(f"{args.out}/scores.md", encoding="utf-8").read())
        return 0

    p.set_defaults(func=run)


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="BOP19 scores (AR_VSD, AR_MSSD, AR_MSPD, AR) of a results CSV, as one JSON object")
    p.add_argument("--dataset", required=True, help="BOP dataset folder (with test_targets_bop19.json, camera.json)")
    p.add_argument("--results", required=True, help="BOP19 results CSV (METHOD_DATASET-SPLIT.csv)")
    p.add_argument("--split", default="test", help="split folder (default test)")
    p.add_argument("--models-dir", default=None, help="evaluation meshes (default: models_eval/ if present, else models/)")
    p.add_argument("--no-vsd", action="store_true", help="skip VSD even where depth images exist")

    def run(args: argparse.Namespace) -> int:
        import json

        from cooppose.eval.scoring import score_results

        scores = score_results(args.dataset, args.results, split=args.split, models_dir=args.models_dir,
                               vsd=False if args.no_vsd else None)
        print(json.dumps(scores, indent=1))
        return 0

    p.set_defaults(func=run)


COMMANDS = [_add_onboard, _add_eval, _add_score]


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
