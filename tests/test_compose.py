"""The operators' files: docker-compose.yml, its CPU override, .env.example and the Dockerfiles.

The test suite reads them as data: every service an operator needs, the GPU reservation,
health checks behind every ``service_healthy``, the volumes, secrets only as files, and
settings that exist (a misspelt ``MDF_`` variable is silently ignored by the service, so
it is caught here instead). ``make compose-check`` builds and runs them for real; it needs
a Docker daemon and minutes, so it is not part of the suite.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from mdf.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {f"MDF_{name.upper()}" for name in Settings.model_fields}
APP_SERVICES = ("migrate", "scheduler", "worker", "trainer", "listener", "deliverer")
INTERPOLATED = re.compile(r"\$\{(MDF_[A-Z0-9_]+)")


class Reset:
    """Compose's ``!reset`` tag: the override removes what the base file set."""

    def __init__(self, value: Any):
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset(loader.construct_sequence(node)))


def _load(name: str) -> dict[str, Any]:
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load("docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only) for short and long volume syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts[target] = (source, mode == ["ro"])
        else:
            mounts[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
    return mounts


def test_every_role_is_a_service(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "postgres", *APP_SERVICES, "flower"}
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert services["scheduler"]["command"] == ["scheduler"]
    assert services["worker"]["command"][:1] == ["worker"]
    assert services["trainer"]["command"] == ["worker", "--queues", "training"]
    assert services["listener"]["command"] == ["dicom", "listen"]
    assert services["deliverer"]["command"] == ["worker", "--queues", "deliver"]
    for name in APP_SERVICES:
        assert services[name]["image"] == "mdf-screening:${IMAGE_TAG:-latest}"
    for name, service in services.items():  # built by scripts/images.py, never pulled
        assert service["pull_policy"] == "never" and "build" not in service, name
        assert service["image"].startswith("mdf-"), name


def test_workers_see_the_gpus_and_each_claims_its_own(services: dict[str, Any]) -> None:
    for name in ("worker", "trainer"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert services["worker"]["environment"]["MDF_DEVICE"] == "auto"  # one GPU per replica
    assert services["trainer"]["environment"]["MDF_DEVICE"] == "cuda:0"
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N


def test_the_dicom_services_run_where_a_profile_names_them(services: dict[str, Any]) -> None:
    listener, deliverer = services["listener"], services["deliverer"]
    assert listener["profiles"] == ["listen"] and deliverer["profiles"] == ["deliver"]
    assert listener["environment"]["MDF_DICOM_HOST"] == "0.0.0.0"  # reachable through the port
    assert listener["ports"] == [
        f"${{DICOM_PORT:-11112}}:{listener['environment']['MDF_DICOM_PORT']}"
    ]
    assert listener["healthcheck"]["test"][1:4] == ["mdf", "dicom", "echo"]
    assert _mounts(listener)["/data"] == ("data", False)  # the spool outlives the container
    assert "deploy" not in deliverer and deliverer["environment"]["MDF_DEVICE"] == "cpu"
    assert deliverer["healthcheck"]["test"][1:3] == ["mdf", "ping"]


def test_the_cpu_override_drops_the_gpu(services: dict[str, Any]) -> None:
    override = _load("docker-compose.cpu.yml")["services"]
    for name in ("worker", "trainer"):
        devices = override[name]["deploy"]["resources"]["reservations"]["devices"]
        assert isinstance(devices, Reset) and devices.value == []
        assert override[name]["environment"]["MDF_DEVICE"] == "cpu"
    for name in APP_SERVICES:  # the image's CPU flavour
        assert override[name]["image"] == "mdf-screening:${IMAGE_TAG:-latest}-cpu"
    assert set(override) <= set(services)


def test_start_order_waits_for_health_and_migrations(services: dict[str, Any]) -> None:
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("scheduler", "worker", "trainer", "listener", "deliverer"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "redis": {"condition": "service_healthy"},
        }
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no health check"


def test_long_running_services_have_health_checks(services: dict[str, Any]) -> None:
    for name in ("redis", "postgres", *APP_SERVICES[1:], "flower"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert services["worker"]["healthcheck"]["test"][1:3] == ["mdf", "ping"]


def test_inbox_is_read_only_and_data_and_checkpoints_are_shared(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    assert {"data", "checkpoints"} <= set(compose["volumes"])
    for name in ("scheduler", "worker", "trainer"):
        mounts = _mounts(services[name])
        assert mounts["/inbox"][1], f"{name} must mount the inbox read-only"
        assert mounts["/data"] == ("data", False)
    assert _mounts(services["worker"])["/checkpoints"] == ("checkpoints", True)
    assert _mounts(services["trainer"])["/checkpoints"] == ("checkpoints", False)
    for name in APP_SERVICES:
        assert services[name]["environment"]["MDF_DATA_DIR"] == "/data"


def test_settings_come_from_the_env_file_and_secrets_only_from_files(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    for name in APP_SERVICES:
        assert services[name]["env_file"] == ".env"
    for name, service in services.items():
        for key, value in service.get("environment", {}).items():
            if key.endswith("_FILE"):  # a Docker secret the service is given
                secret = str(value).removeprefix("/run/secrets/")
                assert secret in service["secrets"], f"{name}: {key} names no secret of its own"
            elif re.search(r"PASSWORD|SECRET|KEY|URL", key):
                assert str(value).startswith("${"), f"{name}: {key} must come from .env"
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("${SECRETS_DIR:-./secrets}/")
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        assert environment["MDF_PSEUDONYM_KEY_FILE"] == "/run/secrets/pseudonym_key"
        assert environment["MDF_DATABASE_PASSWORD_FILE"] == "/run/secrets/postgres_password"
        assert environment["MDF_BROKER_PASSWORD_FILE"] == "/run/secrets/redis_password"
    assert services["redis"]["secrets"] == ["redis_password"]
    assert services["postgres"]["secrets"] == ["postgres_password"]


def test_every_mdf_variable_is_a_real_setting(services: dict[str, Any]) -> None:
    used = set()
    for name in ("docker-compose.yml", "docker-compose.cpu.yml"):
        used |= set(INTERPOLATED.findall((ROOT / name).read_text()))
        for service in _load(name)["services"].values():
            used |= {key for key in service.get("environment", {}) if key.startswith("MDF_")}
    assert used, "the compose files set no MDF_ variable"
    assert used <= FIELDS, f"not settings: {sorted(used - FIELDS)}"


def test_env_example_documents_every_setting_and_only_settings() -> None:
    documented = set(
        re.findall(r"^#? ?(MDF_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    assert documented - FIELDS == set(), f"not settings: {sorted(documented - FIELDS)}"
    assert FIELDS - documented == set(), f"undocumented: {sorted(FIELDS - documented)}"


def test_the_images_build_offline_from_pinned_wheels() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "ARG BASE=mdf-base:bookworm" in dockerfile
    assert "pip install --no-cache-dir --no-index --find-links /wheels" in dockerfile
    assert "USER mdf" in dockerfile and "HEALTHCHECK" in dockerfile and "LABEL" in dockerfile
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
    assert {"gpu", "cpu"} <= stages and "\nFROM ${FLAVOUR}\n" in dockerfile
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    unpinned = [dep for dep in project["dependencies"] if "==" not in dep]
    assert unpinned == []
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".env", ".git", "secrets"} <= set(ignored)


def test_every_service_image_has_its_stage_and_entry_point(services: dict[str, Any]) -> None:
    dockerfile = (ROOT / "docker" / "services.Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
    for name in ("postgres", "redis", "flower"):
        assert services[name]["image"] == f"mdf-{name}:${{IMAGE_TAG:-latest}}"
        assert name in stages
        entry_point = ROOT / "docker" / f"{name}-entrypoint.sh"
        assert entry_point.stat().st_mode & 0o111, f"{entry_point} is not executable"
        assert f"COPY docker/{name}-entrypoint.sh" in dockerfile
