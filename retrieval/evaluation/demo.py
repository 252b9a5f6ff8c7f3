"""The demo photo set: real photos that installable packages ship (see docs/photo-sources.md).

scikit-image's sample photos (public domain / CC0, a dependency of this project) are
always there; the Debian package lomiri-wallpapers-16.04 (CC-BY / CC-BY-SA / CC0 per
file) adds 13 landscape and nature photos, and opencv-doc (Apache-2.0 and BSD-3-Clause) two
street signs with words on them, when installed (scripts/setup.sh installs both where
apt-get is available).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from retrieval import paths

SKIMAGE_PHOTOS = [
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
    "motorcycle_left.png", "rocket.jpg", "hubble_deep_field.jpg", "moon.png", "retina.jpg",
]
WALLPAPER_GLOB = ("/usr/share/backgrounds", "*_by_*.jpg")
# Two street signs: "no parking" tells them apart only by the words on them (OCR).
SIGNS = [Path("/usr/share/doc/opencv-doc/examples/text") / name for name in ("scenetext01.jpg", "scenetext02.jpg")]

# "a woman", "a red bowl" and "a sign that says no parking" need the experts: ImageNet has no
# person class, no colours and no words.
DEMO_QUERIES = ["a cat", "a cup of coffee", "a rocket launch", "mountains and a lake", "an astronaut", "a woman",
                "a red bowl", "a sign that says no parking"]


def demo_sources() -> list[Path]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    sources = [data / name for name in SKIMAGE_PHOTOS if (data / name).exists()]
    folder, pattern = WALLPAPER_GLOB
    sources += sorted(Path(folder).glob(pattern))
    sources += [sign for sign in SIGNS if sign.exists()]
    return sources


def demo_folder() -> Path:
    """Copy the demo photos into one folder (once) and return it."""
    folder = paths.cache_dir() / "demo-photos"
    folder.mkdir(parents=True, exist_ok=True)
    for src in demo_sources():
        dest = folder / src.name
        if not dest.exists():
            shutil.copyfile(src, dest)
    return folder


def remove_demo_index(name: str = "demo") -> None:
    """Delete the demo's own index folder (only a folder that holds a catalog)."""
    from retrieval.storage.catalog import CATALOG_FILE
    from retrieval.storage.store import resolve

    folder = resolve(name)
    if (folder / CATALOG_FILE).exists():
        shutil.rmtree(folder)
