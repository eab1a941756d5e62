"""moderngl + headless EGL backend: one pass writes colour (RGBA8, alpha = instance + 1) and
object xyz + camera z (RGBA32F).

The projection maps the OpenCV pixel centre (u, v) exactly onto the GL pixel centre (see
docs render.md: the usual K-to-GL formula is half a pixel off). One GL context per process, created
lazily; after a fork the child drops the parent's (never touching it) and makes its own. llvmpipe
contexts made before a fork hang the children unless LP_NUM_THREADS=0, so it is set (when unset)
before the first context is created; it costs nothing measurable at template sizes.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from cooppose.errors import RenderError
from cooppose.objects.mesh import ObjectModel
from cooppose.render.renderer import Request, SceneRender

CACHE_MESHES = 32  # meshes kept on the GPU (LRU by content hash)
CACHE_FRAMEBUFFERS = 4
GL_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera -> GL camera (y up, looking down -z)

VERTEX_SHADER = """
#version 330
uniform mat4 mvp;        // object -> GL clip space
uniform mat4 obj_to_cam; // object -> OpenCV camera (mm)
in vec3 in_pos;
in vec3 in_col;
in vec2 in_uv;
out vec3 v_obj;
out vec3 v_cam;
out vec3 v_col;
out vec2 v_uv;
void main() {
    v_obj = in_pos;
    v_cam = (obj_to_cam * vec4(in_pos, 1.0)).xyz;
    v_col = in_col;
    v_uv = in_uv;
    gl_Position = mvp * vec4(in_pos, 1.0);
}
"""

FRAGMENT_SHADER = """
#version 330
uniform sampler2D tex;
uniform bool use_tex;
uniform bool lit;
uniform vec3 light_dir;  // towards the light, OpenCV camera frame
uniform float ambient;
uniform float diffuse;
uniform float instance;  // (index + 1) / 255
in vec3 v_obj;
in vec3 v_cam;
in vec3 v_col;
in vec2 v_uv;
layout(location = 0) out vec4 out_rgb;
layout(location = 1) out vec4 out_xyzd;
void main() {
    vec3 c = use_tex ? texture(tex, v_uv).rgb : v_col;
    if (lit) {
        vec3 n = normalize(cross(dFdx(v_cam), dFdy(v_cam)));  // face normal
        if (dot(n, v_cam) > 0.0) n = -n;                      // two-sided: face the camera
        c *= ambient + diffuse * max(dot(n, light_dir), 0.0);
    }
    out_rgb = vec4(clamp(c, 0.0, 1.0), instance);
    out_xyzd = vec4(v_obj, v_cam.z);
}
"""


def gl_projection(K: np.ndarray, W: int, H: int, near: float, far: float) -> np.ndarray:
    """GL projection (4, 4) of an OpenCV camera K whose pixel (u, v) is centred at integer (u, v)."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    P = np.zeros((4, 4))
    P[0, 0] = 2 * fx / W
    P[0, 2] = 1 - 2 * (cx + 0.5) / W
    P[1, 1] = 2 * fy / H
    P[1, 2] = 2 * (cy + 0.5) / H - 1
    P[2, 2] = -(far + near) / (far - near)
    P[2, 3] = -2 * far * near / (far - near)
    P[3, 2] = -1
    return P


def _mat(M: np.ndarray) -> bytes:
    """A 4x4 matrix as GLSL column-major float32 bytes."""
    return np.ascontiguousarray(M.T, dtype=np.float32).tobytes()


@dataclass
class _GLState:
    """Everything GL of one process: context, program, cached meshes and framebuffers."""

    pid: int
    ctx: object
    prog: object
    white: object
    meshes: OrderedDict = field(default_factory=OrderedDict)
    fbos: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.RLock = field(default_factory=threading.RLock)


_STATE: _GLState | None = None
_STATE_LOCK = threading.Lock()


def _create_state(device_index: int | None) -> _GLState:
    os.environ.setdefault("LP_NUM_THREADS", "0")
    try:
        import moderngl

        kwargs = {"backend": "egl"}
        if device_index is not None:
            kwargs["device_index"] = device_index
        ctx = moderngl.create_standalone_context(require=330, **kwargs)
        prog = ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=FRAGMENT_SHADER)
    except Exception as err:  # missing libEGL, no device, driver errors: all mean "no GL here"
        raise RenderError(
            f"cannot create a headless OpenGL (EGL) context: {type(err).__name__}: {err}. Install the Mesa EGL "
            "packages (apt-get install libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri) or use Renderer(backend='torch')."
        ) from err
    white = ctx.texture((1, 1), 3, b"\xff\xff\xff")
    return _GLState(pid=os.getpid(), ctx=ctx, prog=prog, white=white)


def _state(device_index: int | None) -> _GLState:
    """The process's GL state, created on first use and re-created in a forked child."""
    global _STATE
    with _STATE_LOCK:
        if _STATE is None or _STATE.pid != os.getpid():
            _STATE = _create_state(device_index)  # a parent's state is dropped without any GL call
        return _STATE


class GLBackend:
    """Renders scenes with moderngl on a headless EGL context (Mesa llvmpipe on CPU, NVIDIA EGL on GPU)."""

    name = "gl"

    def __init__(self, device_index: int | None = None):
        self.device_index = device_index

    def ensure_context(self) -> str:
        """Create the context if needed; returns the GL renderer string (e.g. 'llvmpipe ...')."""
        return _state(self.device_index).ctx.info["GL_RENDERER"]

    def _mesh(self, st: _GLState, obj: ObjectModel):
        """(vao, texture) of a mesh, uploaded once per content hash."""
        entry = st.meshes.get(obj.content_hash)
        if entry is None:
            n = len(obj.vertices)
            data = np.zeros((n, 8), np.float32)
            data[:, :3] = obj.vertices
            if obj.is_textured:
                data[:, 3:6] = 1.0
                data[:, 6:8] = obj.uv
                img = np.ascontiguousarray(np.flipud(obj.texture))  # GL row 0 = bottom, so v = 0 is the bottom
                tex = st.ctx.texture((img.shape[1], img.shape[0]), 3, img.tobytes(), alignment=1)
                tex.build_mipmaps()
                import moderngl

                tex.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
            else:
                data[:, 3:6] = obj.vertex_colors / 255.0
                tex = None
            vbo = st.ctx.buffer(data.tobytes())
            ibo = st.ctx.buffer(np.ascontiguousarray(obj.faces, dtype=np.int32).tobytes())
            vao = st.ctx.vertex_array(st.prog, [(vbo, "3f 3f 2f", "in_pos", "in_col", "in_uv")], index_buffer=ibo, index_element_size=4)
            entry = (vao, tex, (vbo, ibo))
            st.meshes[obj.content_hash] = entry
            while len(st.meshes) > CACHE_MESHES:
                old_vao, old_tex, bufs = st.meshes.popitem(last=False)[1]
                for o in (old_vao, old_tex, *bufs):
                    if o is not None:
                        o.release()
        st.meshes.move_to_end(obj.content_hash)
        return entry[0], entry[1]

    def _framebuffer(self, st: _GLState, W: int, H: int):
        fbo = st.fbos.get((W, H))
        if fbo is None:
            ctx = st.ctx
            fbo = ctx.framebuffer(
                color_attachments=[ctx.renderbuffer((W, H), 4), ctx.renderbuffer((W, H), 4, dtype="f4")],
                depth_attachment=ctx.depth_renderbuffer((W, H)),
            )
            st.fbos[(W, H)] = fbo
            while len(st.fbos) > CACHE_FRAMEBUFFERS:
                old = st.fbos.popitem(last=False)[1]
                for att in (*old.color_attachments, old.depth_attachment):
                    att.release()
                old.release()
        st.fbos.move_to_end((W, H))
        return fbo

    def render_scene(self, req: Request) -> SceneRender:
        """Render a validated request into numpy outputs."""
        import moderngl

        st = _state(self.device_index)
        H, W = req.size
        with st.lock, st.ctx:
            fbo = self._framebuffer(st, W, H)
            fbo.use()
            st.ctx.enable(moderngl.DEPTH_TEST)
            st.ctx.disable(moderngl.CULL_FACE | moderngl.BLEND)
            fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
            P = gl_projection(req.K, W, H, req.near, req.far)
            prog = st.prog
            prog["lit"].value = req.light is not None
            if req.light is not None:
                prog["light_dir"].value = tuple(req.light.unit_direction())
                prog["ambient"].value = float(req.light.ambient)
                prog["diffuse"].value = float(req.light.diffuse)
            for k in req.visible:
                vao, tex = self._mesh(st, req.objects[k])
                T = req.poses[k]
                prog["mvp"].write(_mat(P @ GL_FLIP @ T))
                prog["obj_to_cam"].write(_mat(T))
                prog["instance"].value = (k + 1) / 255.0
                prog["use_tex"].value = tex is not None
                (tex or st.white).use(location=0)
                prog["tex"].value = 0
                vao.render(moderngl.TRIANGLES)
            rgba = np.frombuffer(fbo.read(components=4, attachment=0), np.uint8).reshape(H, W, 4)[::-1]
            xyzd = np.frombuffer(fbo.read(components=4, attachment=1, dtype="f4"), np.float32).reshape(H, W, 4)[::-1]
        return SceneRender(  # the clear colour already makes the background 0 (instance -1)
            rgb=np.ascontiguousarray(rgba[..., :3]),
            depth=np.ascontiguousarray(xyzd[..., 3]),
            instance=rgba[..., 3].astype(np.int32) - 1,
            xyz=np.ascontiguousarray(xyzd[..., :3]),
        )
