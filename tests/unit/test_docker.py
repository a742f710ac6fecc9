"""The production stack (docker/): Docker Compose itself validates and resolves docker/compose.yaml, and
the resolved configuration is checked: every credential comes from the environment and a missing one
fails loudly, ports are published on 127.0.0.1 only, the services reach each other by service name, and
the image installs the locked dependencies and runs unprivileged.

No Docker engine is needed: `docker compose config` only reads files. Compose v2 is found as the docker
CLI plugin (`docker compose`), as `docker-compose` next to this Python (the Makefile's `.venv/bin`) or on
PATH, or as the command in $AUDITLENS_DOCKER_COMPOSE.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import ROOT

DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"
INIT_SCRIPT = DOCKER / "postgres-init.sh"

SECRETS = ("POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD", "AUDITLENS_WEBHOOK_SECRET",
           "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY")
FOLDERS = ("AUDITLENS_CONFIG_DIR", "AUDITLENS_DATA_DIR")
SERVICES = {"postgres", "mlflow", "prefect-server", "deploy", "worker", "webhook", "dask-scheduler", "dask-worker"}
AUDITLENS_SERVICES = ("deploy", "worker", "webhook")
LONG_RUNNING = SERVICES - {"deploy"}
WORK_POOL = "audit-pool"


# --- finding Docker Compose, and running `config` ------------------------------------------------------
def _is_compose_v2(command: list[str]) -> bool:
    try:
        out = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and re.search(r"version v?2\.", out.stdout) is not None


def _find_compose() -> list[str] | None:
    candidates = []
    if os.environ.get("AUDITLENS_DOCKER_COMPOSE"):
        candidates.append(shlex.split(os.environ["AUDITLENS_DOCKER_COMPOSE"]))
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    beside_python = Path(sys.executable).parent / "docker-compose"
    if beside_python.exists():
        candidates.append([str(beside_python)])
    if shutil.which("docker-compose"):
        candidates.append([shutil.which("docker-compose")])
    return next((c for c in candidates if _is_compose_v2(c)), None)


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    command = _find_compose()
    if command is None:
        pytest.fail("Docker Compose v2 was not found: install the docker CLI's compose plugin, or run "
                    "`make .venv/bin/docker-compose`, or set AUDITLENS_DOCKER_COMPOSE to a Compose v2 command")
    return command


def referenced_variables() -> set[str]:
    """Every ${NAME...} that compose.yaml interpolates ($$ escapes a literal dollar)."""
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))


def dummy_values() -> dict[str, str]:
    """Random values, so that finding one in a file can only mean it was copied there."""
    values = {name: f"dummy{secrets.token_hex(12)}" for name in SECRETS}
    values["AUDITLENS_CONFIG_DIR"] = "/srv/auditlens-test/config"
    values["AUDITLENS_DATA_DIR"] = "/srv/auditlens-test/data"
    return values


def run_config(compose_cmd: list[str], tmp_path: Path, values: dict[str, str], env_file: Path | None = None,
               shell: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`docker compose config --format json` with ``values`` in an env file (or ``env_file``) and ``shell``
    in the environment; none of the caller's own settings for these variables leak in."""
    if env_file is None:
        env_file = tmp_path / "test.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    env = {k: v for k, v in os.environ.items() if k not in referenced_variables() and not k.startswith("COMPOSE_")}
    env.update(shell or {})
    return subprocess.run([*compose_cmd, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def resolved(compose_cmd, tmp_path_factory) -> tuple[dict, dict[str, str]]:
    values = dummy_values()
    out = run_config(compose_cmd, tmp_path_factory.mktemp("compose"), values)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), values


@pytest.fixture(scope="module")
def services(resolved) -> dict:
    return resolved[0]["services"]


# --- compose.yaml ----------------------------------------------------------------------------------------
def test_compose_config_validates_with_every_secret_from_the_environment(resolved):
    config, values = resolved
    assert set(config["services"]) == SERVICES
    env = {name: svc.get("environment", {}) for name, svc in config["services"].items()}
    # each secret reached the services that need it, exactly as given
    assert env["postgres"]["POSTGRES_PASSWORD"] == values["POSTGRES_PASSWORD"]
    assert env["postgres"]["MLFLOW_DB_PASSWORD"] == values["MLFLOW_DB_PASSWORD"]
    assert env["postgres"]["PREFECT_DB_PASSWORD"] == values["PREFECT_DB_PASSWORD"]
    assert urlsplit(env["mlflow"]["MLFLOW_BACKEND_STORE_URI"]).password == values["MLFLOW_DB_PASSWORD"]
    assert urlsplit(env["prefect-server"]["PREFECT_API_DATABASE_CONNECTION_URL"]).password == values["PREFECT_DB_PASSWORD"]
    assert env["mlflow"]["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] == values["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]
    assert env["webhook"]["AUDITLENS_WEBHOOK_SECRET"] == env["deploy"]["AUDITLENS_WEBHOOK_SECRET"] == values["AUDITLENS_WEBHOOK_SECRET"]
    # and only those: the worker runs audits and holds no secret of the stack
    leaked = {name: sorted(k for k, v in e.items() if v in values.values() and k not in FOLDERS) for name, e in env.items()}
    assert leaked["worker"] == [] and "AUDITLENS_WEBHOOK_SECRET" not in env["mlflow"]


@pytest.mark.parametrize("missing", SECRETS + FOLDERS)
def test_a_missing_secret_or_folder_stops_compose_naming_it(compose_cmd, tmp_path, missing):
    values = dummy_values()
    del values[missing]
    out = run_config(compose_cmd, tmp_path, values)
    assert out.returncode != 0
    assert f"required variable {missing} is missing a value: set {missing} in docker/.env" in out.stderr


def test_an_empty_secret_counts_as_missing(compose_cmd, tmp_path):
    values = {**dummy_values(), "MLFLOW_DB_PASSWORD": ""}
    out = run_config(compose_cmd, tmp_path, values)
    assert out.returncode != 0 and "MLFLOW_DB_PASSWORD is missing a value" in out.stderr


def test_no_credential_is_written_in_the_compose_file(resolved):
    _, values = resolved
    text = COMPOSE_FILE.read_text()
    for name in SECRETS:
        assert values[name] not in text
    # a required variable is required wherever it is used: no default value to fall back on
    for name in SECRETS + FOLDERS:
        uses = re.findall(rf"\$\{{{name}([^}}]*)\}}", text)
        assert uses and all(use.startswith(":?") for use in uses), f"{name}: {uses}"
    raw = yaml.safe_load(text)
    reference = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:\?[^}]*|:-)?\}$")  # required, or optional and empty by default
    for name, service in raw["services"].items():
        for key, value in dict(service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|_KEY$", key):
                assert reference.match(str(value)), f"{name}.{key} must be a ${{VARIABLE}}, not a literal"
            for url in re.findall(r"[a-z0-9+]+://[^\s'\"]+", str(value)):
                password = urlsplit(url).password
                assert password is None or reference.match(password), f"{name}.{key} holds a literal password"


def test_every_published_port_binds_loopback_only(services):
    published = {name: svc.get("ports", []) for name, svc in services.items() if svc.get("ports")}
    assert set(published) == {"mlflow", "prefect-server"}  # postgres and the webhook stay on the private network
    for name, ports in published.items():
        for port in ports:
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port}"
    assert {p["target"] for p in published["mlflow"]} == {5000}
    assert {p["target"] for p in published["prefect-server"]} == {4200}


def test_mlflow_stores_runs_in_postgres_and_artifacts_in_a_volume(resolved, services):
    config, _ = resolved
    mlflow = services["mlflow"]
    assert mlflow["image"] == "ghcr.io/mlflow/mlflow:v3.17.2-full"
    store = urlsplit(mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"])
    assert (store.scheme, store.username, store.hostname, store.port, store.path) == ("postgresql+psycopg2", "mlflow", "postgres", 5432, "/mlflow")
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"] and "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert command[command.index("--host") + 1] == "0.0.0.0" and command[command.index("--port") + 1] == "5000"
    assert set(command[command.index("--allowed-hosts") + 1].split(",")) >= {"mlflow:*", "localhost:*", "127.0.0.1:*"}
    volume = next(v for v in mlflow["volumes"] if v["target"] == "/mlartifacts")
    assert volume["type"] == "volume" and volume["source"] in config["volumes"]
    env = mlflow["environment"]
    assert env["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true" and "http" in env["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"].split(",")
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_prefect_server_stores_its_state_in_postgres(services):
    prefect = services["prefect-server"]
    assert prefect["image"] == "prefecthq/prefect:3.8.8-python3.11"
    assert prefect["command"][:3] == ["prefect", "server", "start"]
    assert prefect["command"][prefect["command"].index("--host") + 1] == "0.0.0.0"
    url = urlsplit(prefect["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert (url.scheme, url.username, url.hostname, url.port, url.path) == ("postgresql+asyncpg", "prefect", "postgres", 5432, "/prefect")
    assert prefect["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert prefect["environment"]["PREFECT_UI_API_URL"] == "http://127.0.0.1:4200/api"


def test_the_postgres_init_script_creates_the_roles_and_databases_the_servers_use(services):
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    init = next(v for v in postgres["volumes"] if v["target"].startswith("/docker-entrypoint-initdb.d/"))
    assert Path(init["source"]) == INIT_SCRIPT and init["read_only"] and init["target"].endswith(".sh")
    script = INIT_SCRIPT.read_text()
    roles = set(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD :'(\w+)'", script))
    databases = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+)", script))
    passwords = dict(re.findall(r"\\getenv (\w+) (\w+)", script))
    for service, key, env_name in (("mlflow", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_DB_PASSWORD"),
                                   ("prefect-server", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_DB_PASSWORD")):
        url = urlsplit(services[service]["environment"][key])
        database = url.path.lstrip("/")
        assert databases[database] == url.username  # the server's role owns its database
        variable = dict(roles)[url.username]
        assert passwords[variable] == env_name  # and its password is the one the server connects with
        assert postgres["environment"][env_name] == url.password
    after_connect = script.split("\\connect prefect", 1)[1]
    assert "CREATE EXTENSION IF NOT EXISTS pg_trgm;" in after_connect
    assert os.access(INIT_SCRIPT, os.X_OK)


def test_the_auditlens_services_reach_the_others_by_service_name(services):
    for name in AUDITLENS_SERVICES:
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api", name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert services[name]["image"] == "auditlens:local"
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile" and Path(services[name]["build"]["context"]) == ROOT
    # the service names and ports behind those URLs are the ones the servers listen on
    assert services["prefect-server"]["command"][services["prefect-server"]["command"].index("--port") + 1] == "4200"
    assert services["mlflow"]["command"][services["mlflow"]["command"].index("--port") + 1] == "5000"


def test_mlflow_delivers_the_webhook_where_the_receiver_listens(services):
    from tasks.adapters.deployments import Webhook

    hook = urlsplit(services["deploy"]["environment"]["AUDITLENS_WEBHOOK_URL"])
    receiver = services["webhook"]["command"]
    assert receiver[:2] == ["auditlens", "webhook"]
    assert receiver[receiver.index("--host") + 1] == "0.0.0.0"  # reachable from the mlflow container
    assert hook.hostname == "webhook" and str(hook.port) == receiver[receiver.index("--port") + 1]
    assert hook.path == Webhook().path  # the receiver's default path
    assert receiver[receiver.index("--tracking-uri") + 1] == services["webhook"]["environment"]["MLFLOW_TRACKING_URI"]
    assert services["webhook"]["expose"] == [str(hook.port)] and "ports" not in services["webhook"]


def test_the_receivers_replay_store_is_in_a_volume_its_user_owns(services, resolved, monkeypatch):
    from tasks.adapters.deployments import Webhook

    config, _ = resolved
    webhook = services["webhook"]
    monkeypatch.setenv("AUDITLENS_STATE_DIR", webhook["environment"]["AUDITLENS_STATE_DIR"])
    store = Webhook().replay_store(Path("/app/config/deployments.yaml"))  # the default: no replay_db in the file
    volume = next(v for v in webhook["volumes"] if v["target"] == str(store.parent))
    assert volume["type"] == "volume" and volume["source"] in config["volumes"] and not volume.get("read_only")
    # a new named volume takes the owner of the image's folder: the unprivileged user's, which the image creates
    created = " ".join(rest for keyword, rest in dockerfile_instructions() if keyword == "RUN")
    assert re.search(rf"chown -R auditlens:auditlens {re.escape(str(store.parent))}(\s|$)", created)


def test_the_configuration_is_the_same_wherever_an_audit_is_started_or_run(services, resolved):
    _, values = resolved
    mounts = {name: {v["target"]: v for v in services[name]["volumes"]} for name in AUDITLENS_SERVICES}
    for name in AUDITLENS_SERVICES:
        config = mounts[name]["/app/config"]
        assert (config["type"], config["source"], config["read_only"]) == ("bind", values["AUDITLENS_CONFIG_DIR"], True)
        assert not config.get("bind", {}).get("create_host_path", False)  # a wrong path fails, not an empty folder
    data = mounts["worker"]["/app/data"]
    assert (data["source"], data["read_only"]) == (values["AUDITLENS_DATA_DIR"], True)


def test_the_dask_cluster_runs_the_auditlens_image_reads_the_same_data_and_is_not_published(services, resolved):
    _, values = resolved
    from tasks.adapters.settings import Execution

    for name in ("dask-scheduler", "dask-worker"):
        assert services[name]["image"] == "auditlens:local" and "ports" not in services[name], name
    scheduler, worker = services["dask-scheduler"]["command"], services["dask-worker"]["command"]
    assert scheduler[:2] == ["dask", "scheduler"] and scheduler[scheduler.index("--port") + 1] == "8786"
    address = worker[2]
    assert address == "tcp://dask-scheduler:8786" and Execution(engine="dask", address=address).address == address
    # a partition is read by the Dask worker at the path the Prefect worker's config names
    data = {v["target"]: v for v in services["dask-worker"]["volumes"]}["/app/data"]
    assert (data["source"], data["read_only"]) == (values["AUDITLENS_DATA_DIR"], True)
    assert services["dask-worker"]["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"
    # the audits run on these workers as Dask tasks of the model's process and run the model's code: they hold no
    # credentials and no server's address, which only the flow's process needs to write the record
    assert not services["dask-worker"].get("environment")
    assert "9000" in services["dask-worker"]["healthcheck"]["test"][-1] and "9000:" in " ".join(worker)


@pytest.mark.parametrize("name", ["worker", "dask-worker"])
def test_the_services_that_run_model_code_have_the_least_privilege(services, name):
    """An unprivileged user (the image's), no capabilities, a read-only root filesystem, a private /tmp."""
    service = services[name]
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert any(str(t).startswith("/tmp") for t in service["tmpfs"])
    assert "user" not in service  # the image's own unprivileged user (test_the_image_runs_as_an_unprivileged_user)


def test_the_deploy_step_runs_once_before_the_worker_and_the_receiver(services):
    deploy = services["deploy"]
    assert deploy["restart"] == "no"
    script = deploy["command"][-1]
    assert "auditlens deployments render --deployments config/deployments.yaml --output /tmp/prefect.yaml" in script
    assert f"prefect work-pool create {WORK_POOL} --type process" in script
    assert "prefect --no-prompt deploy --all --prefect-file /tmp/prefect.yaml" in script
    assert "ensure_webhook(" in script
    assert deploy["command"][:2] == ["sh", "-ec"]  # any failing step fails the service
    for name in ("worker", "webhook"):
        assert services[name]["depends_on"]["deploy"]["condition"] == "service_completed_successfully"
    for name in ("deploy", "worker"):
        assert services[name]["depends_on"]["prefect-server"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["mlflow"]["condition"] == "service_healthy"


def test_the_worker_runs_the_pool_of_prefect_yaml(services):
    command = services["worker"]["command"]
    assert command[:4] == ["prefect", "worker", "start", "--pool"] and command[4] == WORK_POOL
    assert command[command.index("--type") + 1] == "process" and "--with-healthcheck" in command
    assert int(command[command.index("--limit") + 1]) >= 1
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert pools == {WORK_POOL}


def test_every_long_running_service_has_a_healthcheck(services):
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck", {})
        assert check.get("test", [None])[0] == "CMD" and not check.get("disable"), name
        assert services[name]["restart"] == "unless-stopped", name
    assert "127.0.0.1" in " ".join(services["postgres"]["healthcheck"]["test"])  # TCP: not the init-time socket
    assert "http://127.0.0.1:5000/health" in services["mlflow"]["healthcheck"]["test"][-1]
    assert "http://127.0.0.1:4200/api/health" in services["prefect-server"]["healthcheck"]["test"][-1]


def test_the_example_env_file_documents_every_variable_and_holds_no_secret(compose_cmd, tmp_path):
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line))
    assert referenced_variables() == set(example)
    for name in SECRETS + FOLDERS:
        assert example[name] == "", f"{name} must be empty in the example"
    # as shipped, it stops compose; with the secrets given in the shell, its defaults resolve like no file at all
    out = run_config(compose_cmd, tmp_path, {}, env_file=ENV_EXAMPLE)
    assert out.returncode != 0 and "is missing a value" in out.stderr
    values = dummy_values()
    with_example = run_config(compose_cmd, tmp_path, {}, env_file=ENV_EXAMPLE, shell=values)
    without = run_config(compose_cmd, tmp_path, values)
    assert with_example.returncode == 0, with_example.stderr
    assert json.loads(with_example.stdout)["services"] == json.loads(without.stdout)["services"]


# --- the Dockerfile ----------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\").strip() if current else stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, rest = current.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            current = ""
    return instructions


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
    return env


def test_the_image_installs_the_locked_dependencies():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert len(installs) == 1 and "pip install -c requirements.lock ." in installs[0]
    copied = [shlex.split(rest)[:-1] for keyword, rest in instructions if keyword == "COPY"]
    sources = {source for group in copied for source in group}
    assert {"requirements.lock", "pyproject.toml"} <= sources
    copy_lock = next(i for i, (k, r) in enumerate(instructions) if k == "COPY" and "requirements.lock" in r)
    install = next(i for i, (k, r) in enumerate(instructions) if k == "RUN" and "pip install" in r)
    assert copy_lock < install
    for source in sources:  # everything copied exists, and the build context lets it through
        assert (ROOT / source).exists(), source
    allowed = {line.strip().lstrip("!").rstrip("/") for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert sources <= allowed, sources - allowed
    # the packages the project needs are all pinned in the lock file
    pinned = {re.split(r"==", line)[0].lower().replace("_", "-") for line in (ROOT / "requirements.lock").read_text().splitlines()
              if "==" in line}
    for package in ("prefect", "mlflow", "great-expectations", "scikit-learn", "shap", "asyncpg"):
        assert package in pinned, package


def test_the_image_runs_as_an_unprivileged_user():
    instructions = dockerfile_instructions()
    users = [(i, rest) for i, (keyword, rest) in enumerate(instructions) if keyword == "USER"]
    assert users, "no USER instruction: the image would run as root"
    index, user = users[-1]
    assert user.split(":")[0] not in {"root", "0"}
    created = " ".join(rest for keyword, rest in instructions[:index] if keyword == "RUN")
    assert re.search(rf"useradd\b[^&]*\b{re.escape(user)}\b", created), f"user {user} is not created before USER"
    uid = re.search(r"--uid (\d+)", created)
    assert uid and int(uid.group(1)) >= 1000
    assert not any(keyword == "USER" for keyword, _ in instructions[index + 1:])
    commands = [i for i, (keyword, _) in enumerate(instructions) if keyword in {"CMD", "ENTRYPOINT"}]
    assert commands and min(commands) > index


def test_the_image_starts_a_worker_offline_and_keeps_the_auditlens_command():
    instructions = dockerfile_instructions()
    assert not any(keyword == "ENTRYPOINT" for keyword, _ in instructions)  # `docker run IMAGE auditlens ...` works
    cmd = json.loads(next(rest for keyword, rest in instructions if keyword == "CMD"))
    assert cmd == ["prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process"]
    env = dockerfile_env()
    assert env["AUDITLENS_HOME"] == "/app" and ("WORKDIR", "/app") in instructions
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["GX_ANALYTICS_ENABLED"] == "false"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["DO_NOT_TRACK"] == "1"
    # prefect.yaml's pull step enters $AUDITLENS_HOME, where the entrypoints are
    pull = yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"]
    assert pull == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $AUDITLENS_HOME }}"}}]
    assert ("COPY", "prefect.yaml ./") in instructions
    assert (ROOT / "pyproject.toml").read_text().count('auditlens = "auditlens.cli:app"') == 1
