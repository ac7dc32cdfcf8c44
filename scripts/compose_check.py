"""``make compose-check``: the compose stack built and run for real, offline.

It must pass before a change to the Dockerfile, the compose files or the settings lands.
Every step is timed and printed as ``name: value``; the last line is
``compose_check: ok`` when every check held (exit status 0), else ``compose_check:
FAILED: why`` (exit status 1) after the services' last log lines.

1. The images (scripts/images.py: the Docker daemon, the Compose plugin, base images,
   wheelhouse, ``docker build --network none``), tagged ``check``.
2. A project folder (``MDF_BUILD_DIR/compose-check``): ``.env``, fresh random secrets
   in ``secrets/``, an empty inbox; the tiny model into the checkpoints volume.
3. ``up`` with the CPU override and one worker: every health check turns healthy and
   ``migrate`` exits 0.
4. A synthetic night (``mdf synth`` with the files a site sends by mistake) moved into
   the inbox; the scheduler's scan (every minute here) takes it in, the worker
   classifies it.
5. Two workers; a second, larger night; one worker killed (``docker kill``) mid-batch:
   the scheduler re-sends its lapsed claim and the survivor finishes the night.
6. Checks: every image ended exactly once (done with one prediction, or rejected with
   the reason its file deserves), health checks healthy, Flower answers and sees the
   workers, the metrics scraped once agree with the database, no secret in the compose
   configuration, a container's settings or an image's history, the services run as
   their own users and the inbox is read-only.
7. ``down --volumes``: nothing is left (``--keep`` leaves the stack up to look at).
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

import images  # scripts/images.py: python puts this script's folder first on sys.path
from prometheus_client.parser import text_string_to_metric_families

from mdf.synthetic.bad_files import BAD_FILES

REPO = images.REPO
TAG = "check"  # images built here; --tag names others (a loaded bundle's: latest)
PROJECT = "mdf-check"
CHECK_DIR = images.BUILD_DIR / "compose-check"
SECRETS = ("postgres_password", "redis_password", "pseudonym_key")
METRICS_PORT = 9464
SERVICE_IMAGES = ("mdf-screening", "mdf-postgres", "mdf-redis", "mdf-flower")
SCRAPE = (
    "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
    f"'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=10).read().decode())"
)
T = TypeVar("T")


class CheckFailed(Exception):
    """A check that did not hold: the message says which and what was seen."""


def compose(*args: str, capture: bool = True, check: bool = True) -> str:
    command = ["docker", "compose", "--project-directory", str(CHECK_DIR), "-p", PROJECT]
    command += ["-f", str(REPO / "docker-compose.yml"), "-f", str(REPO / "docker-compose.cpu.yml")]
    result = subprocess.run(command + list(args), capture_output=capture, text=True)
    if check and result.returncode:
        raise CheckFailed(f"docker compose {' '.join(args)}: {result.stderr.strip()[-2000:]}")
    return result.stdout if capture else ""


def docker(*args: str) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True)
    if result.returncode:
        raise CheckFailed(f"docker {' '.join(args)}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def wait_for(what: str, condition: Callable[[], T], timeout_s: float, interval_s: float = 2) -> T:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)
    return value


def sql(query: str) -> list[list[str]]:
    """Rows of ``query`` in the stack's database, through psql in the postgres container."""
    out = compose(
        "exec",
        "-T",
        "postgres",
        "psql",
        "-U",
        "mdf",
        "-d",
        "mdf",
        "-At",
        "-F",
        "\t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        query,
    )
    return [line.split("\t") for line in out.splitlines() if line]


def containers() -> dict[str, dict]:
    """Every container of the project, stopped ones included, by name."""
    out = compose("ps", "--all", "--format", "json")
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {row["Name"]: row for row in rows}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def all_healthy(expected_workers: int) -> bool:
    """Every running container with a health check is healthy, migrate exited 0, and
    ``expected_workers`` workers run."""
    found = containers()
    workers = [c for c in found.values() if c["Service"] == "worker" and c["State"] == "running"]
    if len(workers) != expected_workers:
        return False
    for container in found.values():
        if container["Service"] == "migrate":
            if container["State"] != "exited":
                return False
            if container["ExitCode"] != 0:
                raise CheckFailed(f"migrate exited {container['ExitCode']}")
        elif container["State"] == "running" and container["Health"] not in ("", "healthy"):
            return False
    return True


def stack_images(tag: str) -> list[str]:
    """The images of the stack under ``tag``, and the base images they were built on."""
    return [f"{name}:{tag}" for name in SERVICE_IMAGES] + [
        f"mdf-screening:{tag}-cpu",
        images.BASE,
        images.SERVICES_BASE,
    ]


def write_project(tag: str, flower_port: int) -> dict[str, str]:
    """The project folder: .env, random secrets (readable in the containers, in a folder
    only root enters), an empty inbox. Returns the secrets."""
    shutil.rmtree(CHECK_DIR, ignore_errors=True)
    (CHECK_DIR / "inbox").mkdir(parents=True)
    (CHECK_DIR / "staging").mkdir()
    secrets_dir = CHECK_DIR / "secrets"
    secrets_dir.mkdir(mode=0o700)
    values = {name: secrets.token_hex(32) for name in SECRETS}
    for name, value in values.items():
        (secrets_dir / name).write_text(value + "\n")
        (secrets_dir / name).chmod(0o644)
    settings = {
        "IMAGE_TAG": tag,
        "INBOX_DIR": CHECK_DIR / "inbox",
        "SECRETS_DIR": secrets_dir,
        "FLOWER_PORT": flower_port,
        "POSTGRES_USER": "mdf",
        "POSTGRES_DB": "mdf",
        "MDF_DATABASE_URL": "postgresql+psycopg://mdf@postgres:5432/mdf",
        "MDF_BROKER_URL": "redis://redis:6379/0",
        "MDF_MODEL_DIR": "/checkpoints/base",
        "MDF_CHUNK_SIZE": 8,
        "MDF_SCAN_CRON": "* * * * *",  # nightly in production: every minute here
        "MDF_CLAIM_LEASE_S": 30,  # a killed worker's claim lapses quickly
    }
    (CHECK_DIR / ".env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return values


def deliver(name: str, images_count: int, seed: int) -> None:
    """A synthetic night written beside the inbox, then moved in at once, as a site's
    upload finishes."""
    staged = CHECK_DIR / "staging" / name
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mdf.cli",
            "synth",
            str(staged),
            "-n",
            str(images_count),
            "--seed",
            str(seed),
            "--size",
            "256",
            "--bad-files",
        ],
        cwd=CHECK_DIR / "staging",
        check=True,
        capture_output=True,
    )
    staged.rename(CHECK_DIR / "inbox" / name)


def counts() -> Counter[str]:
    rows = sql("SELECT status, count(*) FROM images GROUP BY status")
    return Counter({status: int(n) for status, n in rows})


def delivered() -> dict[str, str]:
    """Every file delivered so far, as the containers see it -> the status it must end in
    (and the reason code of a file a site sends by mistake)."""
    inbox = CHECK_DIR / "inbox"
    expected = {}
    for path in sorted(inbox.rglob("*")):
        name = path.relative_to(inbox).as_posix()
        if path.is_file() and path.name != "manifest.csv":
            inside = name.partition("/")[2]  # the path inside its night
            code = BAD_FILES.get(inside)
            expected[f"/inbox/{name}"] = f"rejected {code}" if code else "done "
    return expected


def outcomes() -> dict[str, str]:
    """Each registered path -> its image's status and reason code."""
    rows = sql(
        "SELECT p.path, i.status || ' ' || coalesce(i.reason_code, '') "
        "FROM image_paths AS p JOIN images AS i ON i.id = p.image_id"
    )
    return dict(rows)


def settled() -> bool:
    """Every delivered file is registered and its image ended."""
    ended = counts().keys() <= {"done", "rejected", "failed"}
    return ended and outcomes().keys() == delivered().keys()


def processing(night: str) -> dict[str, str]:
    """A night's seconds from its first image registered to its last finished, and images
    done per second of it, from the database: the wait for the next scan is left out."""
    ((done, seconds),) = sql(
        "SELECT count(*), extract(epoch FROM max(i.finished_at) - min(i.registered_at)) "
        "FROM images AS i WHERE i.status = 'done' AND EXISTS (SELECT 1 FROM image_paths AS p "
        f"WHERE p.image_id = i.id AND p.path LIKE '/inbox/{night}/%')"
    )
    return {
        f"{night}_processing_s": f"{float(seconds):.1f}",
        f"{night}_images_per_s": f"{int(done) / float(seconds):.2f}",
    }


def scrape(container: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples a container serves at /metrics, fetched from inside it."""
    text = docker("exec", container, "python3", "-c", SCRAPE)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def check_outcomes() -> None:
    """Every delivered file ended once: its image done with exactly one prediction, or
    rejected with the reason its file deserves (identical files are one image)."""
    seen, expected = outcomes(), delivered()
    wrong = {path: seen.get(path) for path, want in expected.items() if seen.get(path) != want}
    wrong |= {path: seen[path] for path in seen.keys() - expected.keys()}
    if wrong:
        raise CheckFailed(f"files that did not end as they should (path: outcome): {wrong}")
    twice = sql("SELECT image_id FROM predictions GROUP BY image_id HAVING count(*) <> 1")
    unpredicted = sql(
        "SELECT id FROM images WHERE status = 'done' AND id NOT IN "
        "(SELECT image_id FROM predictions)"
    )
    if twice or unpredicted:
        raise CheckFailed(f"images predicted twice {twice}, done without prediction {unpredicted}")


def check_metrics(workers: Sequence[str]) -> dict[str, float]:
    """One scrape of the scheduler and every worker, compared with the database."""
    scheduler = next(n for n, c in containers().items() if c["Service"] == "scheduler")
    samples = scrape(scheduler)
    served = {
        (dict(labels)["status"], dict(labels)["reason_code"]): value
        for (name, labels), value in samples.items()
        if name == "mdf_images" and value
    }
    rows = sql("SELECT status, coalesce(reason_code, ''), count(*) FROM images GROUP BY 1, 2")
    stored = {(status, code): float(n) for status, code, n in rows}
    if served != stored:
        raise CheckFailed(f"mdf_images {served} differs from the database {stored}")
    depth = samples.get(("mdf_queue_depth", (("queue", "inference"),)))
    if depth != 0:
        raise CheckFailed(f"mdf_queue_depth of inference is {depth} after the nights")
    (version,) = sql("SELECT name FROM model_versions")[0]
    predictions = int(sql("SELECT count(*) FROM predictions")[0][0])
    written = 0.0
    for worker in workers:
        worker_samples = scrape(worker)
        models = [
            dict(labels)["version"]
            for (name, labels), _ in worker_samples.items()
            if name == "mdf_model_info"
        ]
        if models != [version]:
            raise CheckFailed(f"{worker} serves {models}, the database has {version}")
        written += worker_samples.get(("mdf_chunk_images_total", (("outcome", "written"),)), 0)
    # A killed worker's counters died with it: the survivors wrote some, never more.
    if not 0 < written <= predictions:
        raise CheckFailed(f"workers report {written} predictions written, database {predictions}")
    return {"metrics_written_by_live_workers": written, "metrics_predictions": predictions}


def check_flower(port: int, workers: int) -> None:
    """Flower answers on its published port and sees the live inference workers online
    (its own Prometheus metrics: its API wants a login, which this stack does not set)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=10) as reply:
        if reply.read().strip() != b"OK":
            raise CheckFailed("Flower's /healthcheck did not answer OK")

    def online() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            families = text_string_to_metric_families(reply.read().decode())
            seen = {
                sample.labels["worker"]
                for family in families
                for sample in family.samples
                if sample.name == "flower_worker_online" and sample.value == 1
            }
        return sum(name.startswith("inference-") for name in seen) >= workers

    wait_for("Flower to see the workers online", online, timeout_s=120, interval_s=5)


def check_no_secret_shows(tag: str, values: dict[str, str]) -> None:
    """No secret in the resolved compose files, a container's settings or an image."""
    shown = [compose("config")]
    shown += [docker("inspect", name) for name in containers()]
    for image in stack_images(tag):
        shown += [docker("history", "--no-trunc", image), docker("image", "inspect", image)]
    for name, value in values.items():
        if any(value in text for text in shown):
            raise CheckFailed(f"the secret {name} shows outside /run/secrets")


def check_users_and_inbox(scheduler: str, worker: str) -> None:
    for container, user in ((scheduler, "mdf"), (worker, "mdf")):
        if docker("exec", container, "id", "-un").strip() != user:
            raise CheckFailed(f"{container} does not run as {user}")
    probe = subprocess.run(
        ["docker", "exec", scheduler, "touch", "/inbox/written"], capture_output=True
    )
    if probe.returncode == 0:
        raise CheckFailed("the scheduler could write into the inbox")


def image_sizes(tag: str) -> dict[str, str]:
    sizes = {}
    for image in stack_images(tag):
        size = int(docker("image", "inspect", "--format", "{{.Size}}", image))
        sizes[f"image_{image.replace(':', '_')}_mb"] = f"{size / 1e6:.0f}"
    return sizes


def run_check(tag: str, build: bool, night_images: tuple[int, int]) -> dict[str, object]:
    timings: dict[str, object] = {}
    started = time.monotonic()

    def lap(name: str, since: float) -> float:
        timings[name] = f"{time.monotonic() - since:.1f}"
        return time.monotonic()

    if build:
        timings.update(images.build(REPO, tag)[0])
    timings.update(image_sizes(tag))
    step = lap("images_s", started)
    flower_port = free_port()
    values = write_project(tag, flower_port)
    compose(
        "run",
        "--rm",
        "--no-deps",
        "trainer",
        "model",
        "init",
        "--preset",
        "tiny",
        "/checkpoints/base",
    )
    step = lap("model_s", step)

    compose("up", "--detach")
    wait_for("every service healthy", lambda: all_healthy(1), timeout_s=420, interval_s=5)
    step = lap("up_healthy_s", step)

    deliver("night-1", night_images[0], seed=1)
    wait_for("night 1 to end", settled, timeout_s=900)
    timings["night1_images"] = night_images[0]
    step = lap("night1_s", step)
    timings.update(processing("night-1"))

    compose("up", "--detach", "--scale", "worker=2", "--no-recreate")
    wait_for("two healthy workers", lambda: all_healthy(2), timeout_s=420, interval_s=5)
    step = lap("scale_to_two_s", step)

    deliver("night-2", night_images[1], seed=2)
    before = counts()["done"]
    wait_for("night 2 under way", lambda: counts()["done"] >= before + 16, timeout_s=600)
    victim = sorted(n for n, c in containers().items() if c["Service"] == "worker")[-1]
    docker("kill", victim)
    timings["killed"] = victim
    timings["killed_at_done"] = counts()["done"] - before
    wait_for("night 2 to end", settled, timeout_s=900)
    timings["night2_images"] = night_images[1]
    step = lap("night2_s", step)
    timings.update(processing("night-2"))
    timings["images_resent"] = int(sql("SELECT count(*) FROM images WHERE attempts > 1")[0][0])
    timings["killed_worker_state"] = containers()[victim]["State"]

    check_outcomes()
    live = [
        n for n, c in containers().items() if c["Service"] == "worker" and c["State"] == "running"
    ]
    wait_for("the live services healthy", lambda: all_healthy(len(live)), timeout_s=300)
    timings.update(check_metrics(live))
    check_flower(flower_port, len(live))
    check_no_secret_shows(tag, values)
    scheduler = next(n for n, c in containers().items() if c["Service"] == "scheduler")
    check_users_and_inbox(scheduler, live[0])
    lap("checks_s", step)
    return timings


def logs_tail() -> None:
    print(compose("ps", "--all", check=False), file=sys.stderr)
    print(compose("logs", "--no-color", "--tail", "30", check=False)[-12000:], file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    parser.add_argument("--tag", default=TAG, help=f"tag of the images (default: {TAG})")
    parser.add_argument(
        "--no-build",
        dest="build",
        action="store_false",
        help="use the images already loaded (an air-gapped site's, from the bundle)",
    )
    parser.add_argument(
        "--images",
        type=int,
        nargs=2,
        default=(24, 96),
        metavar=("N1", "N2"),
        help="images of the first and the second night (default: 24 96)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    images.BUILD_DIR.mkdir(parents=True, exist_ok=True)
    images.ensure_docker()
    images.ensure_compose()
    failure = None
    try:
        for name, value in run_check(args.tag, args.build, tuple(args.images)).items():
            print(f"{name}: {value}", flush=True)
    except (CheckFailed, subprocess.CalledProcessError) as error:
        failure = str(error)
        logs_tail()
    finally:
        if not args.keep:
            teardown = time.monotonic()
            compose("down", "--volumes", "--remove-orphans", "--timeout", "60", check=False)
            print(f"down_s: {time.monotonic() - teardown:.1f}")
    print(f"total_s: {time.monotonic() - started:.1f}")
    print(f"compose_check: FAILED: {failure}" if failure else "compose_check: ok")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
