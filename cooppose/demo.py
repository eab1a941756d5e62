"""`cooppose demo`: the bundled synthetic scene, how it is made, and one pipeline run scored after every stage.

The scene: the held-out duck (`objects/bundled_mesh_path("duck")`) on a table seen from 35 degrees
above, three procedural distractors (`data.synth.objects.make_object`), one of them partly hiding the
duck, over a crop of the scikit-image "coffee" photo (CC0) whose depth is the table plane. It is
rendered by `Renderer.render_scene`, written to `assets/demo/` as rgb.png, depth.png (uint16, mm),
mask.png (the duck's visible pixels) and scene.json (K, ground-truth pose and box), and regenerated
identically by `scripts/make_demo_scene.py`.

The run: `PoseEstimator.estimate(..., debug=True)` on the bundled scene; the chosen hypothesis' pose
after each stage (coarse: the pose its first refinement started from; refine: its last refined pose;
select: the pose selection chose) is compared with the ground truth.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cooppose.errors import CheckpointError, InputError
from cooppose.geometry.transforms import look_at, make_pose, rotation_error_deg
from cooppose.pipeline.checks import mask_box

DEMO_DIR = Path(__file__).resolve().parent / "assets" / "demo"
SCENE_FILE = "scene.json"
SCENE_FORMAT = "cooppose-demo-scene"
SCENE_VERSION = 1
FILES = {"rgb": "rgb.png", "depth": "depth.png", "mask": "mask.png"}

WIDTH, HEIGHT = 640, 480
K_DEMO = np.array([[615.0, 0.0, 318.5], [0.0, 612.0, 243.2], [0.0, 0.0, 1.0]])
CAMERA_ELEVATION_DEG, CAMERA_AZIMUTH_DEG, CAMERA_DISTANCE_MM = 35.0, -20.0, 520.0  # looking at the table origin
LIGHT = dict(direction=(0.35, -0.8, -0.5), ambient=0.45, diffuse=0.6)  # camera frame, from above the camera
PHOTO, PHOTO_ROWS, PHOTO_COLS = "coffee", (0, 165), (380, 600)  # a stretch of wooden table in the photo
DISTRACTOR_SEED = 0
DUCK_YAW_DEG = 200.0
# (make_object kind, largest extent mm, yaw deg, table x mm, table y mm); the first stands between camera and duck
DISTRACTORS = (("textured", 92.0, 40.0, 55.1, -9.4), ("multicolor", 75.0, 109.0, -60.0, 140.0),
               ("textured", 108.0, -23.0, -170.0, -90.0))
STAGES = ("coarse", "refine", "select")


@dataclass
class DemoScene:
    """The demo image of the duck with its ground truth."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) uint16 mm, every pixel valid (objects or table)
    mask: np.ndarray  # (H, W) bool, the duck's visible pixels
    K: np.ndarray  # (3, 3)
    T_gt: np.ndarray  # (4, 4) T_cam_obj of the duck, mm
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) box of the visible duck pixels
    info: dict = field(default_factory=dict)  # everything in scene.json


def _yaw(deg: float) -> np.ndarray:
    """Rotation (3, 3) about the table's z axis."""
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _on_table(vertices: np.ndarray, yaw_deg: float, x: float, y: float) -> np.ndarray:
    """T_table_obj (4, 4): the mesh turned by yaw_deg and set down on the table plane z = 0 at (x, y)."""
    R = _yaw(yaw_deg)
    return make_pose(R, np.array([x, y, -(vertices @ R.T)[:, 2].min()]))


def table_camera() -> np.ndarray:
    """T_cam_table (4, 4) of the demo camera."""
    e, a = np.radians(CAMERA_ELEVATION_DEG), np.radians(CAMERA_AZIMUTH_DEG)
    eye = CAMERA_DISTANCE_MM * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    return look_at(eye, np.zeros(3))


def table_depth(K: np.ndarray, T_cam_table: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Depth (H, W) float64 mm of the table plane z = 0 at every pixel (inf where a ray misses it)."""
    H, W = size
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T  # (H, W, 3), z = 1
    R, t = T_cam_table[:3, :3], T_cam_table[:3, 3]
    n_cam, d = R[:, 2], float(R[:, 2] @ t)  # plane n . X = d in the camera frame
    denom = rays @ n_cam
    with np.errstate(divide="ignore"):
        depth = np.where(denom * d > 0, d / denom, np.inf)
    return depth


def make_demo_scene(renderer=None) -> DemoScene:
    """Render the demo scene from the constants above (same inputs, same image)."""
    from cooppose.data.synth.objects import make_object
    from cooppose.data.synth.textures import load_photo
    from cooppose.objects import ObjectModel, bundled_mesh_path, load_mesh
    from cooppose.render import Light, Renderer

    renderer = renderer or Renderer()
    duck = load_mesh(bundled_mesh_path("duck"))
    rng = np.random.default_rng(DISTRACTOR_SEED)
    models, placements = [duck], [_on_table(duck.vertices, DUCK_YAW_DEG, 0.0, 0.0)]
    for i, (kind, extent, yaw, x, y) in enumerate(DISTRACTORS):
        o = make_object(rng, kind)
        vertices = o.vertices * (extent / np.ptp(o.vertices, axis=0).max())
        models.append(ObjectModel.from_arrays(vertices, o.faces, o.colors, o.uv, o.texture, name=f"distractor{i}"))
        placements.append(_on_table(vertices, yaw, x, y))
    T_cam_table = table_camera()
    poses = [T_cam_table @ T for T in placements]
    size = (HEIGHT, WIDTH)
    scene = renderer.render_scene(models, poses, K_DEMO, size, Light(**LIGHT))
    fg = scene.instance >= 0
    photo = load_photo(PHOTO)[slice(*PHOTO_ROWS), slice(*PHOTO_COLS)]
    background = cv2.resize(np.ascontiguousarray(photo), (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    rgb = np.where(fg[..., None], scene.rgb, background).astype(np.uint8)
    depth_mm = np.where(fg, scene.depth, table_depth(K_DEMO, T_cam_table, size))
    if not np.all(np.isfinite(depth_mm)) or depth_mm.max() > 65535:
        raise InputError("the demo camera sees past the table; the depth image would have holes.")
    mask = scene.instance == 0
    full = renderer.render(duck, K_DEMO, poses[0], size).mask
    box = tuple(float(v) for v in mask_box(mask))
    info = {
        "format": SCENE_FORMAT,
        "version": SCENE_VERSION,
        "object": "duck",
        "width": WIDTH,
        "height": HEIGHT,
        "K": K_DEMO.tolist(),
        "depth_scale": 1.0,
        "T_cam_obj": poses[0].tolist(),
        "box": [float(v) for v in box],
        "box_full": [float(v) for v in mask_box(full)],
        "visib_fract": round(float(mask.sum() / full.sum()), 6),
        "distractors": [{"kind": k, "extent_mm": e, "seed": DISTRACTOR_SEED, "order": i, "T_cam_obj": T.tolist()}
                        for i, ((k, e, *_), T) in enumerate(zip(DISTRACTORS, poses[1:]))],
        "background": f"scikit-image '{PHOTO}' photo rows {list(PHOTO_ROWS)} cols {list(PHOTO_COLS)} (CC0)",
        "renderer": renderer.name,
        "files": dict(FILES),
        "made_by": "scripts/make_demo_scene.py",
    }
    return DemoScene(rgb=rgb, depth=np.round(depth_mm).astype(np.uint16), mask=mask, K=K_DEMO.copy(),
                     T_gt=poses[0].copy(), box=box, info=info)


def write_demo_scene(scene: DemoScene, directory: str | Path = DEMO_DIR) -> list[Path]:
    """Write rgb.png, depth.png, mask.png and scene.json into `directory` (each atomically); returns the paths."""
    from cooppose.fileio import atomic_write_bytes

    directory = Path(directory)
    images = {"rgb": cv2.cvtColor(scene.rgb, cv2.COLOR_RGB2BGR), "depth": scene.depth,
              "mask": scene.mask.astype(np.uint8) * 255}
    paths = []
    for key, image in images.items():
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if not ok:
            raise OSError(f"could not encode {key} as PNG")
        paths.append(atomic_write_bytes(directory / FILES[key], buf.tobytes()))
    text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in scene.info.items()) + "\n}\n"
    paths.append(atomic_write_bytes(directory / SCENE_FILE, text.encode()))
    return paths


def _read_png(path: Path, flags: int) -> np.ndarray:
    """A PNG read by OpenCV with `flags`; InputError when missing or unreadable."""
    image = cv2.imread(str(path), flags) if path.is_file() else None
    if image is None:
        raise InputError(f"demo scene file {path} is missing or unreadable; regenerate it with scripts/make_demo_scene.py.")
    return image


def load_demo_scene(directory: str | Path = DEMO_DIR) -> DemoScene:
    """Read a demo scene written by `write_demo_scene` (default: the bundled one)."""
    directory = Path(directory)
    path = directory / SCENE_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"demo scene {path} is missing or not JSON ({err}); regenerate it with scripts/make_demo_scene.py.") from err
    if not isinstance(info, dict) or info.get("format") != SCENE_FORMAT or info.get("version") != SCENE_VERSION:
        raise InputError(f"{path} is not a version-{SCENE_VERSION} {SCENE_FORMAT} file.")
    rgb = cv2.cvtColor(_read_png(directory / FILES["rgb"], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    depth = _read_png(directory / FILES["depth"], cv2.IMREAD_UNCHANGED)
    mask = _read_png(directory / FILES["mask"], cv2.IMREAD_GRAYSCALE) > 0
    size = (info["height"], info["width"])
    if rgb.shape[:2] != size or depth.shape != size or depth.dtype != np.uint16 or mask.shape != size:
        raise InputError(f"the images in {directory} do not match the {size[1]}x{size[0]} uint16-depth scene of {path}.")
    return DemoScene(rgb=rgb, depth=depth, mask=mask, K=np.array(info["K"], dtype=np.float64),
                     T_gt=np.array(info["T_cam_obj"], dtype=np.float64), box=tuple(info["box"]), info=info)


# ---------------------------------------------------------------- the run


@dataclass
class StageError:
    """The chosen hypothesis' pose after one stage and its error against the ground truth."""

    stage: str  # one of STAGES
    T: np.ndarray  # (4, 4) mm
    rot_err_deg: float
    trans_err_mm: float
    mssd_mm: float
    mssd_over_diameter: float
    seconds: float  # time the stage took (all hypotheses)

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return {"stage": self.stage, "rot_err_deg": self.rot_err_deg, "trans_err_mm": self.trans_err_mm,
                "mssd_mm": self.mssd_mm, "mssd_over_diameter": self.mssd_over_diameter, "seconds": self.seconds,
                "T": self.T.tolist()}


@dataclass
class DemoResult:
    """One demo run: per-stage errors of the chosen hypothesis, every hypothesis' final error, timings."""

    mode: str  # "rgb" or "rgbd"
    stages: list[StageError]
    hypotheses: list[dict]  # best first: score, template_id and errors of each final pose
    timings: dict[str, float]  # load_s, onboard_s, estimate_s
    hyps: list = field(repr=False, default_factory=list)  # the PoseHypothesis list (with debug data)

    def to_dict(self) -> dict:
        """JSON-able dict (what `cooppose demo --json` prints)."""
        return {"mode": self.mode, "stages": [s.to_dict() for s in self.stages], "hypotheses": self.hypotheses,
                "timings": self.timings}


def pose_errors(T: np.ndarray, T_gt: np.ndarray, obj) -> dict[str, float]:
    """Rotation error (deg), translation error (mm), MSSD (mm, symmetry-aware) and MSSD / diameter of T against T_gt."""
    from cooppose.eval.metrics import mssd

    T, T_gt = np.asarray(T, dtype=np.float64), np.asarray(T_gt, dtype=np.float64)
    e = mssd(T[:3, :3], T[:3, 3], T_gt[:3, :3], T_gt[:3, 3], obj.vertices, obj.symmetries)
    return {"rot_err_deg": float(rotation_error_deg(T[:3, :3], T_gt[:3, :3])),
            "trans_err_mm": float(np.linalg.norm(T[:3, 3] - T_gt[:3, 3])),
            "mssd_mm": float(e), "mssd_over_diameter": float(e / obj.diameter)}


def stage_poses(h) -> dict[str, np.ndarray]:
    """Poses (4, 4) of one hypothesis after each stage, from its debug data (estimate(..., debug=True), n_refine >= 1)."""
    if not h.debug or not h.debug.get("refine"):
        raise InputError("stage poses need a hypothesis from estimate(..., debug=True) with n_refine >= 1.")
    iterations = h.debug["refine"]
    return {"coarse": np.asarray(iterations[0]["view"].T, dtype=np.float64),
            "refine": np.asarray(iterations[-1]["T_after"], dtype=np.float64), "select": h.T}


def load_estimator(checkpoints: str | Path | None = None, size: str = "tiny", device: str = "cpu",
                   cache_dir: str | Path | None = None):
    """`PoseEstimator.from_pretrained`, with a missing-checkpoint message that says how the demo's networks are made."""
    from cooppose.pipeline import PoseEstimator

    try:
        return PoseEstimator.from_pretrained(checkpoints, size=size, device=device, cache_dir=cache_dir)
    except CheckpointError as err:
        where = checkpoints or "cooppose/assets/checkpoints"
        raise CheckpointError(
            f"{err}\nThe demo needs coarse_{size}.pt, refiner_{size}.pt and selection_{size}.pt in {where}. Make them "
            f"with `cooppose synth objects`, `cooppose synth scenes` and `cooppose train coarse|refiner|selection "
            f"--config configs/<kind>_{size}.json` (docs/usage.md, section 'cooppose train'), then run "
            f"`cooppose demo --checkpoints <folder with the three .pt files>`."
        ) from err


def run_demo(estimator, scene: DemoScene, obj, n_hypotheses: int = 1, rgbd: bool = False, n_refine: int = 3) -> DemoResult:
    """Estimate the duck's pose in `scene` and score the chosen hypothesis after each stage."""
    if int(n_refine) < 1:
        raise InputError(f"the demo needs at least one refinement iteration (got {n_refine}); the refine stage is reported.")
    t0 = time.perf_counter()
    estimator.onboard(obj)
    t1 = time.perf_counter()
    depth = scene.depth if rgbd else None
    hyps = estimator.estimate(scene.rgb, scene.K, obj, box=scene.box, depth=depth, depth_scale=1.0,
                              n_hypotheses=n_hypotheses, n_refine=n_refine, debug=True)
    t2 = time.perf_counter()
    best = hyps[0]
    poses = stage_poses(best)
    stages = [StageError(stage=s, T=poses[s], seconds=float(best.timings.get(s, 0.0)), **pose_errors(poses[s], scene.T_gt, obj))
              for s in STAGES]
    listing = [{"rank": i, "score": h.score, "template_id": h.template_id, **pose_errors(h.T, scene.T_gt, obj)}
               for i, h in enumerate(hyps)]
    timings = {"onboard_s": t1 - t0, "estimate_s": t2 - t1}
    return DemoResult(mode="rgbd" if rgbd else "rgb", stages=stages, hypotheses=listing, timings=timings, hyps=hyps)


def report_lines(result: DemoResult, obj) -> list[str]:
    """The human-readable table of a run: one line per stage, then the timings."""
    lines = [f"duck (held out of training, diameter {obj.diameter:.1f} mm), {result.mode.upper()}, "
             f"{len(result.hypotheses)} hypothes{'i' if len(result.hypotheses) == 1 else 'e'}s",
             f"{'stage':<8}{'rot err (deg)':>15}{'trans err (mm)':>16}{'MSSD/diameter':>15}{'time (s)':>10}"]
    for s in result.stages:
        lines.append(f"{s.stage:<8}{s.rot_err_deg:>15.2f}{s.trans_err_mm:>16.1f}{s.mssd_over_diameter:>15.3f}{s.seconds:>10.2f}")
    if len(result.hypotheses) > 1:
        best = min(result.hypotheses, key=lambda h: h["mssd_over_diameter"])
        lines.append(f"selection chose hypothesis 0 (score {result.hypotheses[0]['score']:.3f}); the most accurate one "
                     f"was rank {best['rank']} (MSSD/diameter {best['mssd_over_diameter']:.3f})")
    lines.append("  ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    return lines


def _box_picture(rgb: np.ndarray, box, color=(250, 210, 40)) -> np.ndarray:
    """The image with a box drawn on it."""
    out = rgb.copy()
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    cv2.rectangle(out, (x0, y0), (x1, y1), color, 2, cv2.LINE_AA)
    return out


def save_pictures(result: DemoResult, scene: DemoScene, obj, renderer, out: str | Path) -> list[Path]:
    """Write input.png, overlay.png (final pose), stages.png (each stage and the ground truth, zoomed), coarse.png and refine_<i>.png."""
    from cooppose import viz
    from cooppose.geometry.camera import make_crop, warp

    out = Path(out)
    best = result.hyps[0]
    written = [viz.save_png(out / "input.png", _box_picture(scene.rgb, scene.box)),
               viz.save_png(out / "overlay.png", viz.overlay_pose(scene.rgb, obj, scene.K, best.T, renderer=renderer))]
    crop = make_crop(scene.box, scene.K, 240, pad=1.6)
    tiles = []
    for s in result.stages:
        picture = viz.overlay_pose(scene.rgb, obj, scene.K, s.T, renderer=renderer)
        tiles.append(viz.caption(warp(picture, crop), f"{s.stage}: {s.rot_err_deg:.1f} deg {s.trans_err_mm:.0f} mm"))
    truth = viz.overlay_pose(scene.rgb, obj, scene.K, scene.T_gt, renderer=renderer, color=viz.YELLOW)
    tiles.append(viz.caption(warp(truth, crop), "ground truth"))
    written.append(viz.save_png(out / "stages.png", viz.grid(tiles, cols=4)))
    written.append(viz.save_png(out / "coarse.png", viz.coarse_panel(best.debug["coarse"])))
    for i, iteration in enumerate(best.debug["refine"]):
        written.append(viz.save_png(out / f"refine_{i}.png", viz.refine_panel(iteration, renderer, obj)))
    return written
