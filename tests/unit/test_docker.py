"""No Docker engine runs here: check what can be checked of the image and the compose file."""

import json
import tomllib

import yaml

from node.settings import load_settings
from tests.peers.helpers import REPO

DOCKER = REPO / "docker"


def test_compose_wires_segnode_to_orthanc_on_the_right_ports() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    seg, orthanc = compose["services"]["segnode"], compose["services"]["orthanc"]
    assert "11112:11112" in seg["ports"] and "8080:8080" in seg["ports"]
    assert "4242:4242" in orthanc["ports"]
    assert seg["build"]["dockerfile"] == "docker/Dockerfile"
    mounts = " ".join(orthanc["volumes"])
    assert "forward-to-segnode.lua" in mounts and "orthanc.json" in mounts


def test_the_orthanc_config_registers_segnode_and_loads_the_forwarding_rule() -> None:
    cfg = json.loads((REPO / "config" / "orthanc" / "orthanc.json").read_text())
    assert cfg["DicomModalities"]["segnode"] == ["SEGNODE", "segnode", 11112]
    assert cfg["LuaScripts"] == ["/etc/orthanc/forward-to-segnode.lua"]


def test_the_site_config_is_valid_and_sends_to_the_orthanc_service(tmp_path) -> None:
    s = load_settings(DOCKER / "segnode-site.toml", env={})
    assert s.destination("pacs").host == "orthanc" and s.rules[0].destinations == ("pacs",)
    assert tomllib.loads((DOCKER / "segnode-site.toml").read_text())


def test_dockerfile_is_slim_non_root_with_a_healthcheck_and_a_models_volume() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "slim" in text.splitlines()[1]
    assert "USER segnode" in text and "HEALTHCHECK" in text and "/api/health" in text
    assert '"/models"' in text and "EXPOSE 11112 8080" in text
