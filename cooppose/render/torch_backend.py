"""Pure-torch z-buffer rasterizer: the fallback when no GL context can be made, and the oracle of the tests.

Each triangle enumerates the pixel centres (u, v) (integers, OpenCV convention) inside its screen
bounding box; a pixel is covered when its three edge weights are >= 0. The nearest camera z wins
(`scatter_reduce` amin; ties go to the highest face index). Attributes are interpolated with
perspective-correct barycentrics. Triangles with a vertex nearer than NEAR_MM are dropped.
Textures are sampled bilinearly (no mipmaps, unlike the GL backend). Float32, like GL.

On CPU a render runs with one intra-op thread: its ops are small, and thread hand-offs cost more than
they save (on a busy 2-core machine: 620 ms per 160 x 160 view with 2 threads, 43 ms with 1).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from cooppose.objects.mesh import ObjectModel
from cooppose.render.renderer import NEAR_MM, Request, SceneRender

MAX_CANDIDATES = 4_000_000  # (pixel, triangle) pairs tested at once; bounds memory
CACHE_MESHES = 16


def _cross2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _edge_weights(tri: torch.Tensor, p: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """Screen-space barycentrics (M, 3) of points p (M, 2) in triangles tri (M, 3, 2) of signed area `area` (M,)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    return torch.stack([_cross2(c - b, p - b), _cross2(a - c, p - c), _cross2(b - a, p - a)], -1) / area[:, None]


class _Faces:
    """The triangles that can cover a pixel: screen vertices, inverse depths, pixel bounding boxes."""

    def __init__(self, p2: torch.Tensor, z: torch.Tensor, faces: torch.Tensor, H: int, W: int):
        tri = p2[faces]  # (F, 3, 2)
        zf = z[faces]  # (F, 3)
        area = _cross2(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        lo = torch.ceil(tri.amin(1)).long()
        hi = torch.floor(tri.amax(1)).long()
        lo = torch.maximum(lo, torch.zeros_like(lo))
        hi = torch.minimum(hi, torch.tensor([W - 1, H - 1], device=hi.device))
        keep = (zf > NEAR_MM).all(1) & (area.abs() > 1e-12) & (lo <= hi).all(1)
        self.fid = keep.nonzero()[:, 0]
        self.tri, self.inv_z, self.area = tri[self.fid], 1.0 / zf[self.fid], area[self.fid]
        self.lo = lo[self.fid]
        self.bw = (hi - lo)[self.fid, 0] + 1
        self.count = self.bw * ((hi - lo)[self.fid, 1] + 1)  # pixels in each bounding box
        self.W = W

    def chunks(self):
        """Yield (pixel index, face id, depth) of the covered pixels, MAX_CANDIDATES pairs at a time."""
        if len(self.fid) == 0:
            return
        ends = torch.cumsum(self.count, 0)
        start = 0
        while start < len(self.fid):
            base = ends[start - 1] if start > 0 else 0
            stop = int(torch.searchsorted(ends, base + MAX_CANDIDATES, right=True))
            stop = max(stop, start + 1)
            yield self._candidates(slice(start, stop))
            start = stop

    def _candidates(self, s: slice):
        count = self.count[s]
        rep = torch.repeat_interleave(torch.arange(len(count), device=count.device), count)
        k = torch.arange(len(rep), device=count.device) - (torch.cumsum(count, 0) - count)[rep]
        bw = self.bw[s][rep]
        px = self.lo[s][rep, 0] + k % bw
        py = self.lo[s][rep, 1] + torch.div(k, bw, rounding_mode="floor")
        p = torch.stack([px, py], -1).to(self.tri.dtype)
        w = _edge_weights(self.tri[s][rep], p, self.area[s][rep])
        inside = (w >= 0).all(1)
        w, rep = w[inside], rep[inside]
        depth = 1.0 / (w * self.inv_z[s][rep]).sum(1)
        return py[inside] * self.W + px[inside], self.fid[s][rep], depth


def rasterize(p2: torch.Tensor, z: torch.Tensor, faces: torch.Tensor, H: int, W: int):
    """Visible face per pixel (H*W,) (-1 = none) and perspective-correct barycentrics (H*W, 3)."""
    tris = _Faces(p2, z, faces, H, W)
    zbuf = torch.full((H * W,), torch.inf, dtype=p2.dtype, device=p2.device)
    cached = []
    for pix, fid, depth in tris.chunks():
        zbuf.scatter_reduce_(0, pix, depth, "amin")
        cached.append((pix, fid, depth))
        if len(cached) > 1:  # several chunks: recompute them in the second pass instead of keeping them
            cached = None
            break
    if cached is None:
        zbuf.fill_(torch.inf)
        for pix, fid, depth in tris.chunks():
            zbuf.scatter_reduce_(0, pix, depth, "amin")
    face = torch.full((H * W,), -1, dtype=torch.long, device=p2.device)
    for pix, fid, depth in cached if cached is not None else tris.chunks():
        win = depth == zbuf[pix]
        face.scatter_reduce_(0, pix[win], fid[win], "amax")
    bary = torch.zeros((H * W, 3), dtype=p2.dtype, device=p2.device)
    hit = (face >= 0).nonzero()[:, 0]
    if len(hit):
        f = faces[face[hit]]
        p = torch.stack([hit % W, torch.div(hit, W, rounding_mode="floor")], -1).to(p2.dtype)
        tri = p2[f]
        area = _cross2(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        q = _edge_weights(tri, p, area) / z[f]  # perspective correction
        bary[hit] = q / q.sum(1, keepdim=True)
    return face, bary


class TorchBackend:
    """Renders scenes with `rasterize` on a torch device (float32)."""

    name = "torch"

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.dtype = torch.float32
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._pid = os.getpid()

    def _mesh(self, obj: ObjectModel) -> dict:
        """Device tensors of a mesh, cached by content hash."""
        entry = self._cache.get(obj.content_hash)
        if entry is None:
            entry = {
                "v": torch.as_tensor(obj.vertices, dtype=self.dtype, device=self.device),
                "f": torch.as_tensor(obj.faces, dtype=torch.long, device=self.device),
            }
            if obj.is_textured:
                entry["uv"] = torch.as_tensor(obj.uv, dtype=self.dtype, device=self.device)
                tex = torch.from_numpy(np.array(obj.texture)).to(self.device).permute(2, 0, 1)[None]
                entry["tex"] = tex.to(self.dtype) / 255.0  # (1, 3, H, W), row 0 = top
            else:
                entry["col"] = torch.as_tensor(obj.vertex_colors, device=self.device).to(self.dtype) / 255.0
            self._cache[obj.content_hash] = entry
            while len(self._cache) > CACHE_MESHES:
                self._cache.popitem(last=False)
        self._cache.move_to_end(obj.content_hash)
        return entry

    def render_scene(self, req: Request) -> SceneRender:
        """Render a validated request into numpy outputs."""
        if os.getpid() != self._pid:  # a forked child: torch's inherited thread pool would hang
            torch.set_num_threads(1)
            self._pid = os.getpid()
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            with torch.no_grad():
                return self._render(req)
        finally:
            torch.set_num_threads(threads)

    def _render(self, req: Request) -> SceneRender:
        H, W = req.size
        K = torch.as_tensor(req.K, dtype=self.dtype, device=self.device)
        meshes = [self._mesh(req.objects[k]) for k in req.visible]
        v_cam, faces, face_obj, v_offset = [], [], [], [0]
        for i, (k, m) in enumerate(zip(req.visible, meshes)):
            T = torch.as_tensor(req.poses[k], dtype=self.dtype, device=self.device)
            v_cam.append(m["v"] @ T[:3, :3].T + T[:3, 3])
            faces.append(m["f"] + v_offset[-1])
            face_obj.append(torch.full((len(m["f"]),), i, dtype=torch.long, device=self.device))
            v_offset.append(v_offset[-1] + len(m["v"]))
        v_cam, faces, face_obj = torch.cat(v_cam), torch.cat(faces), torch.cat(face_obj)
        z = v_cam[:, 2]
        zs = torch.where(z.abs() < 1e-9, torch.full_like(z, 1e-9), z)
        p2 = torch.stack([K[0, 0] * v_cam[:, 0] / zs + K[0, 2], K[1, 1] * v_cam[:, 1] / zs + K[1, 2]], -1)
        face, bary = rasterize(p2, z, faces, H, W)
        out = SceneRender.empty((H, W))
        hit = (face >= 0).nonzero()[:, 0]
        if len(hit) == 0:
            return out
        fh, w = face[hit], bary[hit]  # (P,), (P, 3)
        obj_of = face_obj[fh]
        depth = torch.zeros(len(hit), dtype=self.dtype, device=self.device)
        xyz = torch.zeros((len(hit), 3), dtype=self.dtype, device=self.device)
        rgb = torch.zeros((len(hit), 3), dtype=self.dtype, device=self.device)
        for i, m in enumerate(meshes):
            sel = (obj_of == i).nonzero()[:, 0]
            if len(sel) == 0:
                continue
            tri = faces[fh[sel]] - v_offset[i]  # (S, 3) vertex ids of the object's own arrays
            ws = w[sel][:, :, None]
            xyz[sel] = (ws * m["v"][tri]).sum(1)
            depth[sel] = (ws[:, :, 0] * z[faces[fh[sel]]]).sum(1)
            if "tex" in m:
                uv = (ws * m["uv"][tri]).sum(1)
                grid = torch.stack([2 * uv[:, 0] - 1, 1 - 2 * uv[:, 1]], -1).to(m["tex"].dtype)
                sampled = F.grid_sample(m["tex"], grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
                rgb[sel] = sampled[0, :, 0].T
            else:
                rgb[sel] = (ws * m["col"][tri]).sum(1)
        if req.light is not None:
            rgb = rgb * self._shade(req, v_cam, faces[fh])[:, None]
        rgb = torch.round(rgb.clamp(0, 1) * 255)
        idx = hit.cpu().numpy()
        out.rgb.reshape(-1, 3)[idx] = rgb.cpu().numpy().astype(np.uint8)
        out.depth.reshape(-1)[idx] = depth.cpu().numpy()
        out.xyz.reshape(-1, 3)[idx] = xyz.cpu().numpy()
        out.instance.reshape(-1)[idx] = np.asarray(req.visible)[obj_of.cpu().numpy()]
        return out

    def _shade(self, req: Request, v_cam: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
        """Lambert factor (P,) on the camera-facing face normal of each pixel's triangle."""
        a, b, c = v_cam[tri[:, 0]], v_cam[tri[:, 1]], v_cam[tri[:, 2]]
        n = torch.nn.functional.normalize(torch.linalg.cross(b - a, c - a), dim=1)
        n = torch.where(((n * a).sum(1) > 0)[:, None], -n, n)  # face the camera
        light = torch.as_tensor(req.light.unit_direction(), dtype=self.dtype, device=self.device)
        return req.light.ambient + req.light.diffuse * (n @ light).clamp_min(0)
