"""docker-compose.yml matches the code: services, their commands, and env names the settings really read."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _settings_env_names() -> set[str]:
    names = set()
    for path in (ROOT / "webapp" / "settings").glob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r"os\.environ\.get\(\s*\"([A-Z0-9_]+)\"", text))
        names |= set(re.findall(r"env_(?:bool|list)\(\s*\"([A-Z0-9_]+)\"", text))
        names |= set(re.findall(r"\"([A-Z0-9_]+)\" (?:not )?in os\.environ", text))
    return names


def _command(service: str) -> str:
    command = SERVICES[service]["command"]
    return " ".join(command) if isinstance(command, list) else command


def test_every_service_is_there():
    assert {"postgres", "redis", "web", "worker", "beat", "gpu-worker", "flower"} <= set(SERVICES)


def test_commands_run_the_right_processes_and_queues():
    web = _command("web")
    assert "gunicorn webapp.wsgi" in web and "collectstatic --noinput" in web and "migrate --noinput" in web
    assert re.search(r"celery -A webapp worker -Q default\b", _command("worker"))
    gpu = _command("gpu-worker")
    assert re.search(r"celery -A webapp worker -Q gpu\b", gpu) and "--pool solo" in gpu and "--concurrency 1" in gpu
    assert "celery -A webapp beat" in _command("beat")
    assert "flower" in _command("flower")


def test_gpu_worker_reserves_nvidia_devices():
    devices = SERVICES["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_app_env_names_are_read_by_the_settings():
    read = _settings_env_names()
    for name in ("web", "worker", "beat", "gpu-worker"):
        env = SERVICES[name]["environment"]
        assert env["DJANGO_SETTINGS_MODULE"] == "webapp.settings.production"
        for required in ("DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "RLHF_ARTIFACT_ROOT"):
            assert required in env, (name, required)
        unknown = sorted(set(env) - read - {"DJANGO_SETTINGS_MODULE"})
        assert not unknown, f"{name} sets env vars no setting reads: {unknown}"
        assert any(v.endswith(":/data/artifacts") for v in SERVICES[name]["volumes"])  # shared artifact storage
    assert "artifacts" in COMPOSE["volumes"]


def test_secret_key_has_no_default():
    assert ":?" in SERVICES["web"]["environment"]["DJANGO_SECRET_KEY"]


def test_dockerfile_installs_the_pinned_requirements():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements.txt" in dockerfile and "FROM python:3.11" in dockerfile
