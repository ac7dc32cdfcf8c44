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
5. DICOM (the ``listen`` and ``deliver`` profiles): a night of DICOM photographs sent by
   dcmtk's ``storescu`` from the host, as a camera would, to the listener's published
   port, after a calling AE title it must refuse; each instance ends classified like the
   inbox's files, and the deliverer sends each study's SR and SEG to a stand-in PACS (a
   pynetdicom Storage SCP in the application image) that holds exactly those the
   deliveries table says were sent. The listener's metrics count what it did.
6. With ``--upgrade-from REVISION`` the stack starts on that release's images (built from
   a git worktree) and, in the middle of a further night, moves to the new ones as README
   says: the application stopped, the new tag (and the DICOM services, new in this
   release) in ``.env``, ``up`` (the one-shot migration first, every service recreated),
   the night finished by the new workers, no image lost; the DICOM step follows.
7. Two workers; a second, larger night; one worker killed (``docker kill``) mid-batch:
   the scheduler re-sends its lapsed claim and the survivor finishes the night.
8. Checks: every image ended exactly once (done with one prediction, or rejected with
   the reason its file deserves), health checks healthy, Flower answers and sees the
   workers, the metrics scraped once agree with the database, no secret in the compose
   configuration, a container's settings or an image's history, the services run as
   their own users and the inbox is read-only.
9. ``down --volumes``: nothing is left (``--keep`` leaves the stack up to look at).
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
from pathlib import Path
from typing import TypeVar

import images  # scripts/images.py: python puts this script's folder first on sys.path
from prometheus_client.parser import text_string_to_metric_families

from mdf.synthetic.bad_files import BAD_FILES

REPO = images.REPO
TAG = "check"  # images built here; --tag names others (a loaded bundle's: latest)
PREVIOUS = "previous"  # the images of --upgrade-from
PROJECT = "mdf-check"
CHECK_DIR = images.BUILD_DIR / "compose-check"
SECRETS = ("postgres_password", "redis_password", "pseudonym_key")
METRICS_PORT = 9464
SERVICE_IMAGES = ("mdf-screening", "mdf-postgres", "mdf-redis", "mdf-flower")
CAMERA, INTRUDER = "CAMERA", "INTRUDER"  # an allowed calling AE title, and one refused
#: The stand-in PACS results are delivered to: it keeps each object under its SOP Instance UID.
PACS_SCP = """
import os
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage
from pydicom.uid import ExplicitVRLittleEndian
os.makedirs("/tmp/received", exist_ok=True)
def store(event):
    with open(f"/tmp/received/{event.request.AffectedSOPInstanceUID}", "wb") as out:
        out.write(event.encoded_dataset())
    return 0
ae = AE(ae_title="PACS")
for sop_class in (Comprehensive3DSRStorage, SegmentationStorage):
    ae.add_supported_context(sop_class, ExplicitVRLittleEndian)
ae.start_server(("0.0.0.0", 11112), evt_handlers=[(evt.EVT_C_STORE, store)])
"""
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
    command += ["-f", str(CHECK_DIR / "pacs.yml")]
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
    ``expected_workers`` workers run; a container that restarted fails the check with its
    last log lines (Docker restarts a crashing service forever)."""
    found = containers()
    for name in found:
        restarts = int(docker("inspect", "--format", "{{.RestartCount}}", name))
        if restarts:
            last = subprocess.run(["docker", "logs", "--tail", "3", name], capture_output=True,
                                  text=True)  # fmt: skip
            raise CheckFailed(f"{name} restarted {restarts} times; it last said:\n"
                              f"{(last.stdout + last.stderr).strip()[-1500:]}")  # fmt: skip
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


def build_previous(revision: str, tag: str) -> dict[str, str]:
    """The application image of ``revision`` (CPU flavour), tagged ``previous``: built from a
    git worktree with this checkout's Dockerfiles, as a release older than them could only
    be built from a registry. The services' images are this build's, tagged ``previous``."""
    worktree = images.BUILD_DIR / f"previous-{revision}"
    shutil.rmtree(worktree, ignore_errors=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--quiet", "--detach",
                    str(worktree), revision], check=True)  # fmt: skip
    try:
        timings, _ = images.build(worktree, PREVIOUS, flavours=("cpu",), services=False)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                       check=True)  # fmt: skip
    for name in SERVICE_IMAGES[1:]:
        docker("tag", f"{name}:{tag}", f"{name}:{PREVIOUS}")
    return {f"previous_{name}": value for name, value in timings.items()}


def update_env(values: dict[str, object]) -> None:
    """Set ``values`` in the project's .env, replacing a line of the same name."""
    env = CHECK_DIR / ".env"
    kept = [line for line in env.read_text().splitlines() if line.partition("=")[0] not in values]
    env.write_text("".join(f"{line}\n" for line in kept + [f"{k}={v}" for k, v in values.items()]))


def dicom_settings(port: int) -> dict[str, object]:
    """The listener on ``port`` of the host, and results delivered to the stand-in PACS."""
    return {
        "COMPOSE_PROFILES": "listen,deliver,check",
        "DICOM_PORT": port,
        "MDF_DICOM_AE_TITLE": "MDF",
        "MDF_DICOM_ALLOWED_AES": CAMERA,
        "MDF_DICOM_STUDY_QUIET_S": 5,
        "MDF_RESULTS_DESTINATIONS": "dicom:PACS@pacs:11112",
        "MDF_RESULTS_BACKOFF_S": 5,
    }


def upgrade(
    tag: str, night: str, images_count: int, settings: dict[str, object]
) -> dict[str, object]:
    """The documented upgrade in the middle of a night: the application stopped, the new
    images and ``settings`` in .env, ``up`` (migrate first, then every service recreated),
    no image lost."""
    deliver(night, images_count, seed=3)
    before = counts()["done"]
    wait_for("the night under way", lambda: counts()["done"] >= before + 8, timeout_s=600)
    ((schema_before,),) = sql("SELECT version_num FROM alembic_version")
    waiting = sum(n for status, n in counts().items() if status in ("queued", "processing"))
    started = time.monotonic()
    # The application stops first, while PostgreSQL and Redis still answer: a worker's
    # warm shutdown finishes its chunk and hands its prefetched one back to the queue.
    # (`up` alone would recreate them under a worker still writing, and wait on it.)
    compose("stop", "scheduler", "worker", "trainer")
    update_env({"IMAGE_TAG": tag, **settings})
    compose("up", "--detach")
    wait_for("the upgraded services healthy", lambda: all_healthy(1), timeout_s=420, interval_s=5)
    healthy = time.monotonic() - started
    wait_for("the upgrade night to end", settled, timeout_s=900)
    ((schema_after,),) = sql("SELECT version_num FROM alembic_version")
    return {
        "upgrade_images_waiting": waiting,
        "upgrade_schema": f"{schema_before}->{schema_after}",
        "upgrade_healthy_s": f"{healthy:.1f}",
        "upgrade_night_s": f"{time.monotonic() - started:.1f}",
    }


def stack_images(tag: str) -> list[str]:
    """The images of the stack under ``tag``, and the base images they were built on."""
    return [f"{name}:{tag}" for name in SERVICE_IMAGES] + [
        f"mdf-screening:{tag}-cpu",
        images.BASE,
        images.SERVICES_BASE,
    ]


def write_project(tag: str, flower_port: int, extra: dict[str, object]) -> dict[str, str]:
    """The project folder: .env (with ``extra``), the stand-in PACS's compose file, random
    secrets (readable in the containers, in a folder only root enters), an empty inbox.
    Returns the secrets."""
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
        **extra,
    }
    (CHECK_DIR / ".env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    pacs = {
        "image": "mdf-screening:${IMAGE_TAG}-cpu",
        "pull_policy": "never",
        "profiles": ["check"],
        "entrypoint": ["python3", "-c", PACS_SCP],
        "healthcheck": {"disable": True},  # not the image's: no worker answers a ping here
        "stop_signal": "SIGKILL",  # it keeps nothing that needs a clean stop
    }
    (CHECK_DIR / "pacs.yml").write_text(json.dumps({"services": {"pacs": pacs}}))  # YAML too
    return values


def synthesise(folder: Path, images_count: int, seed: int, *options: str) -> None:
    """``mdf synth`` into ``folder``, 256 px photographs."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mdf.cli",
            "synth",
            str(folder),
            "-n",
            str(images_count),
            "--seed",
            str(seed),
            "--size",
            "256",
            *options,
        ],
        cwd=CHECK_DIR / "staging",
        check=True,
        capture_output=True,
    )


def deliver(name: str, images_count: int, seed: int) -> None:
    """A synthetic night written beside the inbox, then moved in at once, as a site's
    upload finishes."""
    staged = CHECK_DIR / "staging" / name
    synthesise(staged, images_count, seed, "--bad-files")
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


def outcomes(under: str = "/inbox/") -> dict[str, str]:
    """Each registered path ``under`` a folder -> its image's status and reason code."""
    rows = sql(
        "SELECT p.path, i.status || ' ' || coalesce(i.reason_code, '') "
        f"FROM image_paths AS p JOIN images AS i ON i.id = p.image_id WHERE p.path LIKE '{under}%'"
    )
    return dict(rows)


def service_container(service: str) -> str:
    return next(n for n, c in containers().items() if c["Service"] == service)


def storescu(port: int, calling: str, files: Sequence[Path]) -> tuple[int, str]:
    """dcmtk's storescu from the host to the listener's published port: its exit status and
    how many instances it saw acknowledged (it proposes JPEG baseline and uncompressed)."""
    command = ["storescu", "-v", "-R", "-xy", "-aet", calling, "-aec", "MDF", "127.0.0.1"]
    sent = subprocess.run([*command, str(port), *map(str, files)], capture_output=True, text=True)
    output = sent.stdout + sent.stderr
    if calling == INTRUDER and "Calling AE Title Not Recognized" not in output:
        raise CheckFailed(f"the listener did not refuse {INTRUDER}: {output[-1500:]}")
    return sent.returncode, output.count("Received Store Response (Success)")


def delivery_rows() -> dict[str, str]:
    """Every result object of every destination: its SOP Instance UID -> status."""
    return dict(sql("SELECT sop_instance_uid, status FROM deliveries"))


def dicom_night(port: int, images_count: int) -> dict[str, object]:
    """A night of DICOM photographs sent to the listener as a camera sends them, after an
    association it must refuse: each ends as an inbox file would, the listener's metrics
    count it, and the deliverer sends every finished study's results."""
    camera = CHECK_DIR / "staging" / "camera"
    synthesise(camera, images_count, 5, "--dicom-fraction", "1")
    files = sorted(path for path in camera.rglob("*") if path.suffix != ".csv" and path.is_file())
    storescu(port, INTRUDER, files[:1])
    started = time.monotonic()
    status, acknowledged = storescu(port, CAMERA, files)
    if status or acknowledged != len(files):
        raise CheckFailed(f"storescu exited {status}, {acknowledged} of {len(files)} stored")

    def ended() -> dict[str, str] | None:
        seen = outcomes("/data/dicom/")
        finished = all(
            outcome.split()[0] in ("done", "rejected", "failed") for outcome in seen.values()
        )
        return seen if len(seen) == len(files) and finished else None

    seen = wait_for("the DICOM night to end", ended, timeout_s=600)
    classified = time.monotonic() - started
    if not_done := {path: outcome for path, outcome in seen.items() if outcome != "done "}:
        raise CheckFailed(f"received instances that did not end done: {not_done}")
    samples = scrape(service_container("listener"))
    counted = {
        (name, dict(labels)["outcome"]): value
        for (name, labels), value in samples.items()
        if name in ("mdf_dicom_instances_total", "mdf_dicom_associations_total")
    }
    expected = {
        ("mdf_dicom_instances_total", "stored"): len(files),
        ("mdf_dicom_associations_total", "refused"): 1,
    }
    if any(counted.get(key) != value for key, value in expected.items()):
        raise CheckFailed(f"the listener's metrics {counted} differ from {expected}")
    wait_for("every result delivered", all_delivered, timeout_s=600, interval_s=5)
    return {
        "dicom_instances_sent": len(files),
        "dicom_classified_s": f"{classified:.1f}",
        "dicom_delivered_s": f"{time.monotonic() - started:.1f}",
        "dicom_results_sent": int(
            sql(
                "SELECT count(*) FROM deliveries WHERE status = 'sent' AND study_id IN (SELECT "
                "i.study_id FROM images AS i JOIN image_paths AS p ON p.image_id = i.id "
                "WHERE p.path LIKE '/data/dicom/%')"
            )[0][0]
        ),
    }


def all_delivered() -> bool:
    """Every finished DICOM study has its deliveries and each was sent."""
    undelivered = sql(
        "SELECT DISTINCT i.study_id FROM images AS i WHERE i.status = 'done' "
        "AND i.study_id IS NOT NULL AND i.file_kind = 'dicom' AND i.study_id NOT IN "
        "(SELECT study_id FROM deliveries WHERE kind = 'sr')"
    )
    failed = {uid: status for uid, status in delivery_rows().items() if status == "failed"}
    if failed:
        reasons = sql("SELECT DISTINCT reason FROM deliveries WHERE status = 'failed'")
        raise CheckFailed(f"{len(failed)} deliveries failed: {reasons}")
    return not undelivered and set(delivery_rows().values()) == {"sent"}


def check_pacs_holds_what_was_sent() -> None:
    """The stand-in PACS holds exactly the objects the deliveries table says were sent."""
    held = set(docker("exec", service_container("pacs"), "ls", "/tmp/received").split())
    sent = {uid for uid, status in delivery_rows().items() if status == "sent"}
    if held != sent:
        missing, extra = sorted(sent - held)[:3], sorted(held - sent)[:3]
        raise CheckFailed(
            f"the PACS holds {len(held)} objects, {len(sent)} were sent; not held: {missing}, "
            f"held but not sent: {extra}"
        )


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
    if not int(done):  # settled() looks at ended statuses, not at which: say what they are
        raise CheckFailed(f"no image of {night} ended done: {outcomes(f'/inbox/{night}/')}")
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
    samples = scrape(service_container("scheduler"))
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


def check_users_and_inbox(scheduler: str, others: Sequence[str]) -> None:
    for container in (scheduler, *others):
        if docker("exec", container, "id", "-un").strip() != "mdf":
            raise CheckFailed(f"{container} does not run as mdf")
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


def run_check(
    timings: dict[str, object],
    tag: str,
    build: bool,
    night_images: tuple[int, int],
    upgrade_from: str | None,
) -> None:
    """Every step, its timings and sizes added to ``timings`` as it goes."""
    started = time.monotonic()

    def lap(name: str, since: float) -> float:
        timings[name] = f"{time.monotonic() - since:.1f}"
        return time.monotonic()

    if build:
        timings.update(images.build(REPO, tag)[0])
    timings.update(image_sizes(tag))
    if upgrade_from:
        timings.update(build_previous(upgrade_from, tag))
    step = lap("images_s", started)
    flower_port, dicom_port = free_port(), free_port()
    dicom = dicom_settings(dicom_port)
    # The previous release had no DICOM services: they come with the upgrade.
    values = write_project(
        PREVIOUS if upgrade_from else tag, flower_port, {} if upgrade_from else dicom
    )
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
    if upgrade_from:
        timings.update(upgrade(tag, "night-upgrade", night_images[1], dicom))
        step = time.monotonic()
    timings.update(dicom_night(dicom_port, night_images[0]))
    step = lap("dicom_s", step)

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
    wait_for("every result delivered", all_delivered, timeout_s=600, interval_s=5)
    check_pacs_holds_what_was_sent()
    timings["results_sent"] = len(delivery_rows())  # the inbox's DICOM studies' too
    check_flower(flower_port, len(live))
    check_no_secret_shows(tag, values)
    check_users_and_inbox(
        service_container("scheduler"),
        [live[0], service_container("listener"), service_container("deliverer")],
    )
    lap("checks_s", step)


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
        "--upgrade-from",
        metavar="REVISION",
        help="start on the images of this git revision (the previous release) and upgrade to "
        "the new ones in the middle of a night",
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
    if shutil.which("storescu") is None:
        parser.error("storescu is missing: the DICOM step sends with it (Debian package dcmtk)")
    started = time.monotonic()
    images.BUILD_DIR.mkdir(parents=True, exist_ok=True)
    images.ensure_docker()
    images.ensure_compose()
    failure = None
    timings: dict[str, object] = {}
    try:
        run_check(timings, args.tag, args.build, tuple(args.images), args.upgrade_from)
    except (CheckFailed, subprocess.CalledProcessError) as error:
        failure = str(error)
        logs_tail()
    finally:
        for name, value in timings.items():
            print(f"{name}: {value}", flush=True)
        if not args.keep:
            teardown = time.monotonic()
            compose("down", "--volumes", "--remove-orphans", "--timeout", "60", check=False)
            print(f"down_s: {time.monotonic() - teardown:.1f}")
    print(f"total_s: {time.monotonic() - started:.1f}")
    print(f"compose_check: FAILED: {failure}" if failure else "compose_check: ok")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
