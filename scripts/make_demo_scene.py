"""Regenerate the bundled demo scene (cooppose/assets/demo/) from the constants in cooppose/demo.py.

    python scripts/make_demo_scene.py            # rewrite cooppose/assets/demo/
    python scripts/make_demo_scene.py --out DIR  # write elsewhere (tests compare the two)

Needs scikit-image (the background photo): pip install -e ".[dev]".
"""

from __future__ import annotations

import argparse

from cooppose.demo import DEMO_DIR, make_demo_scene, write_demo_scene
from cooppose.render import Renderer


def main() -> None:
    """Render the scene and write its files."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEMO_DIR), help=f"folder to write (default {DEMO_DIR})")
    parser.add_argument("--backend", default="auto", choices=["auto", "gl", "torch"], help="renderer backend")
    args = parser.parse_args()
    scene = make_demo_scene(Renderer(backend=args.backend))
    for path in write_demo_scene(scene, args.out):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")
    print(f"duck visible fraction {scene.info['visib_fract']:.2f}, box {[round(v, 1) for v in scene.box]}, "
          f"renderer {scene.info['renderer']}")


if __name__ == "__main__":
    main()
