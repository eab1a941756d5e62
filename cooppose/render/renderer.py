"""One rendering interface over two backends: moderngl + headless EGL ("gl") and a pure-torch rasterizer ("torch").

Both follow the OpenCV convention exactly (pixel (u, v) samples the ray through (u, v)), render both
faces of every triangle, and return depth as camera z in mm (0 = empty) and xyz in the object frame
(mm). Colours are the unlit texture / vertex colours unless a `Light` is given (Lambert on face
normals, two-sided). Triangles are clipped at the near plane by GL; the torch rasterizer drops
triangles with a vertex closer than `NEAR_MM` instead (only matters for objects touching the camera).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from cooppose.errors import RenderError
from cooppose.objects.mesh import ObjectModel

RENDERER_VERSION = "1"  # bump when the output of either backend changes (it keys the template cache)
NEAR_MM = 1.0  # nothing closer than this to the camera is drawn
MAX_SIZE = 8192
MAX_OBJECTS = 254  # the GL backend stores instance + 1 in an 8-bit channel
BACKENDS = ("auto", "gl", "torch")
ENV_BACKEND = "COOPPOSE_RENDER_BACKEND"  # overrides backend="auto"


@dataclass(frozen=True)
class Light:
    """Lambert lighting: colour x (ambient + diffuse x max(0, n . direction)), `direction` points to the light (camera frame)."""

    direction: tuple[float, float, float] = (0.0, 0.0, -1.0)  # default: a headlight at the camera
    ambient: float = 0.5
    diffuse: float = 0.5

    def unit_direction(self) -> np.ndarray:
        """The direction (3,) normalised; raises RenderError when it is zero or not finite."""
        d = np.asarray(self.direction, dtype=np.float64).reshape(-1)
        n = np.linalg.norm(d)
        if d.shape != (3,) or not np.isfinite(n) or n == 0:
            raise RenderError(f"Light.direction must be a finite non-zero 3-vector, got {self.direction!r}.")
        return d / n


@dataclass
class RenderResult:
    """Rendering of one object: rgb (H,W,3) uint8, depth (H,W) float32 mm (0 = empty), mask (H,W) bool, xyz (H,W,3) float32 object-frame mm; batched renders add a leading N."""

    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    xyz: np.ndarray


@dataclass
class SceneRender:
    """Rendering of several objects: rgb, depth, instance (H,W) int32 (index into the objects, -1 = background), xyz in each object's own frame."""

    rgb: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    xyz: np.ndarray

    @classmethod
    def empty(cls, size: tuple[int, int]) -> "SceneRender":
        """An image with nothing in it."""
        H, W = size
        return cls(
            rgb=np.zeros((H, W, 3), np.uint8),
            depth=np.zeros((H, W), np.float32),
            instance=np.full((H, W), -1, np.int32),
            xyz=np.zeros((H, W, 3), np.float32),
        )


@dataclass
class Request:
    """A validated scene: objects with their poses (float64 4x4), K (float64 3x3), (H, W), light and the depth range."""

    objects: list[ObjectModel]
    poses: list[np.ndarray]
    K: np.ndarray
    size: tuple[int, int]
    light: Light | None
    visible: list[int] = field(default_factory=list)  # objects at least partly in front of the near plane
    near: float = NEAR_MM
    far: float = 2 * NEAR_MM


def check_size(size) -> tuple[int, int]:
    """(H, W) as ints in [1, MAX_SIZE]; an int means a square image."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError) as err:
        raise RenderError(f"size must be (H, W) or an int, got {size!r}.") from err
    if not (1 <= H <= MAX_SIZE and 1 <= W <= MAX_SIZE) or (H, W) != tuple(size):
        raise RenderError(f"size must be two integers in [1, {MAX_SIZE}], got {size!r}.")
    return H, W


def check_K(K) -> np.ndarray:
    """K as float64 (3, 3) with positive focal lengths (the principal point may lie anywhere: crops)."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]):
        raise RenderError(f"K must be a finite 3x3 [[fx,0,cx],[0,fy,cy],[0,0,1]] with fx, fy > 0, got {K.tolist()}.")
    return K


def check_pose(T) -> np.ndarray:
    """T_cam_obj as float64 (4, 4), a rigid transform in mm."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise RenderError(f"pose must be a finite 4x4 T_cam_obj, got shape {T.shape}.")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0 or not np.allclose(T[3], [0, 0, 0, 1]):
        raise RenderError("pose must be rigid: an orthonormal rotation with det +1 and last row [0, 0, 0, 1].")
    return T


def make_request(objects, poses, K, size, light) -> Request:
    """Validate a scene and compute the near/far planes from the objects' bounding spheres."""
    objects = list(objects)
    poses = [check_pose(T) for T in poses]
    if not objects or len(objects) != len(poses):
        raise RenderError(f"need one pose per object and at least one object, got {len(objects)} objects and {len(poses)} poses.")
    if len(objects) > MAX_OBJECTS:
        raise RenderError(f"at most {MAX_OBJECTS} objects per scene, got {len(objects)}.")
    for obj in objects:
        if not isinstance(obj, ObjectModel):
            raise RenderError(f"objects must be ObjectModel (see cooppose.objects.load_mesh), got {type(obj).__name__}.")
    if light is not None and not isinstance(light, Light):
        raise RenderError(f"light must be a cooppose.render.Light or None, got {type(light).__name__}.")
    if light is not None:
        light.unit_direction()
    req = Request(objects=objects, poses=poses, K=check_K(K), size=check_size(size), light=light)
    z_lo, z_hi = np.inf, -np.inf
    for k, (obj, T) in enumerate(zip(objects, poses)):
        zc = T[2, :3] @ obj.center + T[2, 3]
        if zc + obj.radius > NEAR_MM:
            req.visible.append(k)
            z_lo, z_hi = min(z_lo, zc - obj.radius), max(z_hi, zc + obj.radius)
    if req.visible:
        req.near = max(0.99 * z_lo, NEAR_MM)
        req.far = max(1.01 * z_hi + 1.0, req.near + 1.0)
    return req


_warned_fallback = False


def _make_backend(backend: str, device: str | None):
    """The backend object for a name; 'auto' tries GL and falls back to torch with a one-time warning."""
    global _warned_fallback
    if backend == "auto":
        backend = os.environ.get(ENV_BACKEND, "auto")
        if backend not in BACKENDS:
            raise RenderError(f"${ENV_BACKEND}={backend!r} is not one of {BACKENDS}.")
    if backend in ("auto", "gl"):
        from cooppose.render.gl_backend import GLBackend

        gl = GLBackend(device_index=None if device is None else _gl_device_index(device))
        try:
            gl_renderer = gl.ensure_context()
            if device is not None and device.startswith("cuda") and "llvmpipe" in gl_renderer.lower():
                raise RenderError(
                    f"device={device!r} asks for the GPU but EGL gave the CPU rasterizer ({gl_renderer}); in a container, "
                    "NVIDIA_DRIVER_CAPABILITIES must include 'graphics' (or 'all') so that libEGL_nvidia is mounted."
                )
            return gl
        except RenderError as err:
            if backend == "gl":
                raise
            if not _warned_fallback:
                warnings.warn(f"OpenGL rendering unavailable ({err}); using the slower torch rasterizer.", stacklevel=3)
                _warned_fallback = True
    from cooppose.render.torch_backend import TorchBackend

    return TorchBackend(device=device or "cpu")


def _gl_device_index(device: str) -> int | None:
    """EGL device index from a device string like 'cuda:1' (None for 'cpu' or 'cuda')."""
    if ":" in device:
        return int(device.split(":")[1])
    return None


class Renderer:
    """Renders ObjectModels with intrinsics K and poses T_cam_obj (mm); backend 'auto' | 'gl' | 'torch'.

    `device`: None (CPU rasterizer for torch, the default EGL device for GL) or a torch device string;
    'cuda[:i]' makes the torch backend run on that GPU and the GL backend insist on GPU EGL device i.
    One GL context serves a whole process (the first renderer's device choice holds for the others);
    renders from several threads are serialised.
    """

    def __init__(self, backend: str = "auto", device: str | None = None):
        if backend not in BACKENDS:
            raise RenderError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        self.requested = backend
        self.device = device
        self._backend = None

    def __getstate__(self) -> dict:
        """Pickle only the choice of backend: a worker process makes its own backend (and GL context)."""
        return {"requested": self.requested, "device": self.device, "_backend": None}

    @property
    def backend(self):
        """The backend in use (created on first access)."""
        if self._backend is None:
            self._backend = _make_backend(self.requested, self.device)
        return self._backend

    @property
    def name(self) -> str:
        """'gl' or 'torch': the backend actually used."""
        return self.backend.name

    @property
    def version(self) -> str:
        """Identifies the output of this renderer (backend + RENDERER_VERSION), for caches."""
        return f"{self.name}-v{RENDERER_VERSION}"

    def render_scene(self, objects: list[ObjectModel], poses: list, K: np.ndarray, size, light: Light | None = None) -> SceneRender:
        """Render several objects with occlusion; instance (H, W) holds the object index or -1."""
        req = make_request(objects, poses, K, size, light)
        if not req.visible:
            return SceneRender.empty(req.size)
        return self.backend.render_scene(req)

    def render(self, obj: ObjectModel, K: np.ndarray, T_cam_obj: np.ndarray, size, light: Light | None = None) -> RenderResult:
        """Render one object: rgb, depth (mm, 0 = empty), mask, xyz (object frame, mm)."""
        s = self.render_scene([obj], [T_cam_obj], K, size, light)
        return RenderResult(rgb=s.rgb, depth=s.depth, mask=s.instance == 0, xyz=s.xyz)

    def render_batch(self, obj: ObjectModel, K: np.ndarray, T: np.ndarray, size, light: Light | None = None) -> RenderResult:
        """Render one object in N poses T (N, 4, 4) with K (3, 3) or (N, 3, 3); fields stacked (N, ...)."""
        T = np.asarray(T, dtype=np.float64)
        K = np.asarray(K, dtype=np.float64)
        if T.ndim != 3 or T.shape[1:] != (4, 4) or len(T) == 0:
            raise RenderError(f"render_batch needs poses (N, 4, 4) with N >= 1, got {T.shape}.")
        if K.shape == (3, 3):
            K = np.broadcast_to(K, (len(T), 3, 3))
        if K.shape != (len(T), 3, 3):
            raise RenderError(f"render_batch needs K (3, 3) or ({len(T)}, 3, 3), got {K.shape}.")
        views = [self.render(obj, K[i], T[i], size, light) for i in range(len(T))]
        return RenderResult(*(np.stack([getattr(v, f) for v in views]) for f in ("rgb", "depth", "mask", "xyz")))
