"""Command-line interface: parses arguments and calls the public API; CoopposeError -> message, exit 2."""

from __future__ import annotations

import argparse
import sys

from cooppose.errors import CoopposeError


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def torch_device(text: str) -> str:
    """argparse type: a torch device name (cpu, cuda, cuda:1, mps)."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine; use cpu")
    return text


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
        from cooppose.eval.runner import coop_weights, make_estimator, parse_shard, run_eval

        kwargs = {"checkpoints": args.checkpoints, "stage": args.stage} if args.method == "coop" else {}
        estimator = make_estimator(args.method, **kwargs)
        settings = {**kwargs, "weights": coop_weights(args.checkpoints)} if args.method == "coop" else {}
        scores = run_eval(
            args.dataset, args.out, estimator, split=args.split, mode=args.mode,
            n_hypotheses=args.hypotheses, detections=args.detections, images_every=args.images_every,
            shard=parse_shard(args.shard) if args.shard else None, method_name=args.name or args.method,
            progress=not args.no_progress, settings=settings,
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


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="synthetic training data: objects, BOP scenes, contact sheets")
    ss = p.add_subparsers(dest="synth_command", required=True)

    o = ss.add_parser("objects", help="write procedural (and pybullet) objects as a BOP models/ folder")
    o.add_argument("--out", required=True, help="models folder to write (obj_*.ply, models_info.json, sources.json)")
    o.add_argument("--n", type=int, default=0, help="number of procedural objects (ids 1..n)")
    o.add_argument("--seed", type=int, default=0, help="seed of the object set")
    o.add_argument("--pybullet", action="store_true", help="add the pybullet_data meshes (ids n+1...; never the duck)")
    o.add_argument("--mesh", action="append", default=[], help="a mesh file to write instead (repeatable; ids 1...)")
    o.add_argument("--units", default="mm", choices=["mm", "m"], help="units of the --mesh files")

    def run_objects(args: argparse.Namespace) -> int:
        from cooppose.data.synth import make_object_set, write_models
        from cooppose.data.synth.sources import mesh_file_object

        if args.mesh:
            objects = ((i, mesh_file_object(path, args.units)) for i, path in enumerate(args.mesh, start=1))
            infos = write_models(args.out, objects)
        else:
            infos = make_object_set(args.out, args.n, args.seed, pybullet=args.pybullet, progress=True)
        print(f"{len(infos)} objects in {args.out}")
        return 0

    o.set_defaults(func=run_objects)

    s = ss.add_parser("scenes", help="render a BOP split of synthetic scenes (resumable)")
    s.add_argument("--objects", required=True, help="models folder made by `cooppose synth objects`")
    s.add_argument("--out", required=True, help="BOP dataset folder to write (or resume)")
    s.add_argument("--n-images", type=int, required=True, help="total number of images of the set")
    s.add_argument("--seed", type=int, default=0, help="seed of the image set")
    s.add_argument("--size", default="640x480", help="image size WxH (default 640x480)")
    s.add_argument("--split", default="train_synth", help="split folder (default train_synth)")
    s.add_argument("--workers", type=int, default=1, help="rendering processes (spawned; default 1)")
    s.add_argument("--png", action="store_true", help="write rgb as PNG instead of JPEG")

    def run_scenes(args: argparse.Namespace) -> int:
        import re

        from cooppose.data.synth import SceneConfig, generate_scenes
        from cooppose.errors import ConfigError

        m = re.fullmatch(r"(\d+)x(\d+)", args.size)
        if m is None:
            raise ConfigError(f"--size must be WIDTHxHEIGHT like 640x480, got {args.size!r}.")
        cfg = SceneConfig(width=int(m.group(1)), height=int(m.group(2)), rgb_ext=".png" if args.png else ".jpg")
        r = generate_scenes(args.objects, args.out, args.n_images, seed=args.seed, cfg=cfg, split=args.split,
                            workers=args.workers, progress=True)
        print(f"{r['generated']} images generated ({r['skipped']} already there) in {r['seconds']:.1f} s: "
              f"{r['images_per_s']:.2f} images/s")
        return 0

    s.set_defaults(func=run_scenes)

    v = ss.add_parser("show", help="PNG contact sheet of scenes with visible masks and object ids")
    v.add_argument("--scenes", required=True, help="BOP dataset, split or scene folder")
    v.add_argument("--out", required=True, help="PNG file to write")
    v.add_argument("--n", type=int, default=12, help="number of images (default 12)")
    v.add_argument("--cols", type=int, default=4, help="images per row (default 4)")
    v.add_argument("--labels", choices=["coarse", "refiner", "selection"], default=None,
                   help="instead: the training targets of one sample of this network (patch matches, flow, label)")
    v.add_argument("--index", type=int, default=0, help="with --labels: which sample (default 0)")

    def run_show(args: argparse.Namespace) -> int:
        from cooppose.data.synth import contact_sheet

        if args.labels is None:
            print(contact_sheet(args.scenes, args.out, n=args.n, cols=args.cols))
            return 0
        from cooppose.data.datasets import build_dataset, save_label_picture

        dataset = build_dataset(args.labels, {"scenes": args.scenes, "augment": False, "val_fraction": 0.0}, "train")
        print(save_label_picture(dataset[args.index % len(dataset)], args.out))
        return 0

    v.set_defaults(func=run_show)


def _add_estimate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate", help="6D pose of one object in one image (writes pose.json and overlay.png)")
    p.add_argument("--mesh", required=True, help="mesh file (PLY/OBJ/GLB)")
    p.add_argument("--units", default="mm", choices=["mm", "m"], help="units of the mesh file")
    p.add_argument("--rgb", required=True, help="colour image (PNG/JPEG)")
    p.add_argument("--depth", default=None, help="depth image (16-bit PNG, or .npy), registered to --rgb: RGB-D mode")
    p.add_argument("--depth-scale", type=float, default=1.0, help="depth_mm = depth * scale (default 1.0)")
    p.add_argument("--K", required=True, help="intrinsics: fx,fy,cx,cy or a JSON file (3x3, 9 numbers, cam_K or fx/fy/cx/cy)")
    region = p.add_mutually_exclusive_group(required=True)
    region.add_argument("--box", default=None, help="detection box x0,y0,x1,y1 in pixels")
    region.add_argument("--mask", default=None, help="instance mask PNG (non-zero = object)")
    p.add_argument("--hypotheses", type=int, default=1, help="pose hypotheses (1 or 5 as in Co-op; default 1)")
    p.add_argument("--refine", type=int, default=3, help="refinement iterations (default 3)")
    p.add_argument("--checkpoints", default=None, help="folder of {coarse,refiner,selection}_<size>.pt (default: shipped)")
    p.add_argument("--size", default="tiny", help="network size of the checkpoints (default tiny)")
    p.add_argument("--device", type=torch_device, default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--cache-dir", default=None, help="template cache folder (default ~/.cache/cooppose)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--save-debug", action="store_true", help="also write the coarse and refinement pictures to OUT/debug/")

    from cooppose.errors import InputError

    def numbers(text: str, n: int, flag: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != n:
            raise InputError(f"{flag} needs {n} comma-separated numbers, got {text!r}.")
        return values

    def intrinsics(spec: str):
        import json
        from pathlib import Path

        import numpy as np

        if not Path(spec).is_file():
            fx, fy, cx, cy = numbers(spec, 4, "--K (or a JSON file that does not exist)")
            return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        try:
            d = json.loads(Path(spec).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"--K file {spec} is not valid JSON: {err}.") from err
        if isinstance(d, dict) and len(d) == 1 and isinstance(next(iter(d.values())), dict):
            d = next(iter(d.values()))  # a BOP scene_camera.json with one image
        if isinstance(d, dict) and all(k in d for k in ("fx", "fy", "cx", "cy")):
            return np.array([[d["fx"], 0.0, d["cx"]], [0.0, d["fy"], d["cy"]], [0.0, 0.0, 1.0]], dtype=float)
        if isinstance(d, dict):
            d = d.get("cam_K", d.get("K"))
        K = np.asarray(d, dtype=float) if d is not None else np.zeros(0)
        if K.size != 9:
            raise InputError(f"--K file {spec} holds no 3x3 matrix; give cam_K/K (9 numbers or 3x3) or fx, fy, cx, cy.")
        return K.reshape(3, 3)

    def image(path: str, flag: str):
        from pathlib import Path

        import numpy as np
        from PIL import Image

        if not Path(path).is_file():
            raise InputError(f"{flag} file not found: {path}.")
        if path.endswith(".npy"):
            try:
                return np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:  # not an .npy file, or object arrays (never unpickled)
                raise InputError(f"{flag} file {path} is not a plain numeric .npy array ({err}).") from err
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB") if im.mode in ("P", "CMYK", "YCbCr", "LA") else im)
        except OSError as err:
            raise InputError(f"{flag} file {path} is not a readable image ({err}).") from err

    def run(args: argparse.Namespace) -> int:
        import json
        from pathlib import Path

        from cooppose import viz
        from cooppose.fileio import atomic_write_bytes
        from cooppose.objects import load_mesh
        from cooppose.pipeline import PoseEstimator
        from cooppose.pipeline.checks import check_image

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        obj = load_mesh(args.mesh, units=args.units)
        rgb = image(args.rgb, "--rgb")
        K = intrinsics(args.K)
        box = numbers(args.box, 4, "--box") if args.box else None
        mask = image(args.mask, "--mask") if args.mask else None
        depth = image(args.depth, "--depth") if args.depth else None
        est = PoseEstimator.from_pretrained(args.checkpoints, size=args.size, device=args.device, cache_dir=args.cache_dir)
        hyps = est.estimate(rgb, K, obj, box=box, mask=mask, depth=depth, depth_scale=args.depth_scale,
                            n_hypotheses=args.hypotheses, n_refine=args.refine, debug=args.save_debug)
        out = Path(args.out)
        result = {"mesh": str(args.mesh), "rgb": str(args.rgb), "mode": "rgbd" if depth is not None else "rgb",
                  "K": K.tolist(), "best": hyps[0].to_dict(), "hypotheses": [h.to_dict() for h in hyps]}
        atomic_write_bytes(out / "pose.json", (json.dumps(result, indent=2) + "\n").encode())
        viz.save_png(out / "overlay.png", viz.overlay_pose(check_image(rgb), obj, K, hyps[0].T, renderer=est.renderer))
        if args.save_debug:
            for i, h in enumerate(hyps):
                viz.save_png(out / "debug" / f"h{i}_coarse.png", viz.coarse_panel(h.debug["coarse"]))
                for j, it in enumerate(h.debug["refine"]):
                    viz.save_png(out / "debug" / f"h{i}_refine{j}.png", viz.refine_panel(it, est.renderer, obj))
        print(hyps[0])
        print(f"wrote {out / 'pose.json'} and {out / 'overlay.png'}")
        return 0

    p.set_defaults(func=run)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the coarse, refiner or selection network from a JSON config")
    p.add_argument("kind", choices=["coarse", "refiner", "selection"], help="which network")
    p.add_argument("--config", required=True, help="training config JSON (see configs/)")
    p.add_argument("--out", default=None, help="run folder: checkpoints, logs, exported model (default runs/<config name>)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument("--max-steps", type=int, default=None, help="stop at this step (the schedule is unchanged; resume later)")

    def run(args: argparse.Namespace) -> int:
        import json
        from pathlib import Path

        from cooppose.errors import ConfigError
        from cooppose.train import load_train_config, train

        cfg = load_train_config(args.config)
        if cfg["kind"] != args.kind:
            raise ConfigError(f"{args.config} configures a {cfg['kind']!r} network, not {args.kind!r}.")
        out = Path(args.out or Path("runs") / Path(args.config).stem)
        result = train(cfg, out, resume=not args.no_resume, max_steps=args.max_steps)
        print(json.dumps({"step": result.step, "checkpoint": str(result.checkpoint),
                          "model": str(result.model_path) if result.model_path else None,
                          "train": result.metrics, "val": result.val_metrics}, indent=1))
        return 0

    p.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="estimate the held-out duck's pose in the bundled scene; error after every stage, pictures")
    p.add_argument("--hypotheses", type=int, default=1, help="pose hypotheses (1 or 5 as in Co-op; default 1)")
    p.add_argument("--rgbd", action="store_true", help="use the scene's depth image (RGB-D mode)")
    p.add_argument("--refine", type=int, default=3, help="refinement iterations, at least 1 (default 3)")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON object on the last line")
    p.add_argument("--out", default="cooppose_demo", help="folder for the pictures (default ./cooppose_demo)")
    p.add_argument("--checkpoints", default=None, help="folder of {coarse,refiner,selection}_<size>.pt (default: shipped)")
    p.add_argument("--size", default="tiny", help="network size of the checkpoints (default tiny)")
    p.add_argument("--device", type=torch_device, default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--cache-dir", default=None, help="template cache folder (default ~/.cache/cooppose)")

    def run(args: argparse.Namespace) -> int:
        import json
        import time

        from cooppose import demo
        from cooppose.objects import bundled_mesh_path, load_mesh

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        est = demo.load_estimator(args.checkpoints, size=args.size, device=args.device, cache_dir=args.cache_dir)
        load_s = time.perf_counter() - t0
        duck, scene = load_mesh(bundled_mesh_path("duck")), demo.load_demo_scene()
        result = demo.run_demo(est, scene, duck, n_hypotheses=args.hypotheses, rgbd=args.rgbd, n_refine=args.refine)
        result.timings = {"load_s": load_s, **result.timings}
        written = demo.save_pictures(result, scene, duck, est.renderer, args.out)
        print("\n".join(demo.report_lines(result, duck)))
        print(f"wrote {len(written)} pictures to {args.out}: " + ", ".join(p.name for p in written))
        if args.json:
            print(json.dumps(result.to_dict()))
        return 0

    p.set_defaults(func=run)


COMMANDS = [_add_onboard, _add_eval, _add_score, _add_synth, _add_estimate, _add_train, _add_demo]


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
    except OSError as err:  # a path the command cannot read or write (a file where a folder is needed, no permission)
        print(f"cooppose {args.command}: error: {err}; check the paths given.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
