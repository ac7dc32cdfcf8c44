"""``make bundle``: what an air-gapped site needs to run the service, in one folder.

    MDF_BUILD_DIR/bundle-REVISION/
        images/*.tar        ``docker save`` archives: the application (GPU and CPU flavours
                            in one archive), PostgreSQL, Redis, Flower, and both base images
        wheelhouse/         every wheel the images were built from and the project's own:
                            ``pip install --no-index --find-links wheelhouse mdf-screening``
        docker-compose.yml, docker-compose.cpu.yml, .env.example, README.md
        SHA256SUMS          ``sha256sum -c SHA256SUMS`` checks every file above

The images are built first (scripts/images.py), tagged ``latest`` (what the compose files
run unless IMAGE_TAG says otherwise). README's "Air-gapped site" says how a site checks,
loads and starts it. Prints each step's seconds and the archives' sizes as ``name: value``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import images  # scripts/images.py: python puts this script's folder first on sys.path

#: Archive name -> the images it holds.
ARCHIVES = {
    "mdf-screening": ("mdf-screening:{tag}", "mdf-screening:{tag}-cpu"),
    "mdf-postgres": ("mdf-postgres:{tag}",),
    "mdf-redis": ("mdf-redis:{tag}",),
    "mdf-flower": ("mdf-flower:{tag}",),
    "mdf-base": (images.BASE,),
    "mdf-services-base": (images.SERVICES_BASE,),
}
FILES = ("docker-compose.yml", "docker-compose.cpu.yml", ".env.example", "README.md")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(folder: Path, tag: str, wheels: Path) -> dict[str, str]:
    """Archives, wheelhouse, files and checksums into ``folder``; returns sizes in MB."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    sizes = {}
    for archive, names in ARCHIVES.items():
        path = folder / "images" / f"{archive}.tar"
        tagged = [name.format(tag=tag) for name in names]
        subprocess.run(["docker", "save", "--output", str(path), *tagged], check=True)
        sizes[f"archive_{archive}_mb"] = f"{path.stat().st_size / 1e6:.0f}"
    shutil.copytree(wheels, folder / "wheelhouse", copy_function=os.link)  # same disk: no copy
    images.project_wheel(images.REPO, wheels, folder / "wheelhouse")
    for name in FILES:
        shutil.copy2(images.REPO / name, folder / name)
    listed = sorted(p for p in folder.rglob("*") if p.is_file())
    (folder / "SHA256SUMS").write_text(
        "".join(f"{sha256(path)}  {path.relative_to(folder)}\n" for path in listed)
    )
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--tag", default="latest", help="tag of the images (default: latest)")
    parser.add_argument("--out", type=Path, help="folder (default: MDF_BUILD_DIR/bundle-REV)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    images.BUILD_DIR.mkdir(parents=True, exist_ok=True)
    images.ensure_docker()
    images.ensure_compose()
    timings, wheels = images.build(images.REPO, args.tag)
    folder = args.out or images.BUILD_DIR / f"bundle-{images.revision(images.REPO)}"
    saving = time.monotonic()
    timings |= write_bundle(folder.resolve(), args.tag, wheels)
    timings["bundle_write_s"] = f"{time.monotonic() - saving:.1f}"
    used = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    timings["bundle_mb"] = f"{used / 1e6:.0f}"
    timings["total_s"] = f"{time.monotonic() - started:.1f}"
    for name, value in timings.items():
        print(f"{name}: {value}")
    print(f"bundle: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
