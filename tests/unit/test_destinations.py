"""`[[destinations]]` with DICOM TLS: valid once constructed; each refusal names the key and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.delivery.destinations import Destination
from node.errors import ConfigError
from tests.builders.settings import node_settings


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    """Readable files standing in for the PEMs (construction checks that they can be read, not their contents)."""
    out = {}
    for key in ("ca_file", "certificate", "private_key"):
        path = tmp_path / f"{key}.pem"
        path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
        out[key] = str(path)
    return out


def dicom(**keys: Any) -> dict[str, Any]:
    return {"name": "pacs", "kind": "dicom", "host": "pacs.example.org", "port": 2762, "ae_title": "PACS", **keys}


def test_a_tls_destination_from_toml_values(pem: dict[str, str]) -> None:
    dest = Destination.from_mapping(dicom(tls=True, key_password_env="PACS_KEY_PASSWORD", **pem), 0)
    assert dest.tls and dest.ca_file == pem["ca_file"]
    assert dest.tls_server_name == "pacs.example.org"               # the host, unless server_name says otherwise
    assert Destination.from_mapping(dicom(tls=True, ca_file=pem["ca_file"], server_name="pacs"), 0) \
        .tls_server_name == "pacs"
    described = dest.describe()
    assert described["tls"] is True and described["key_password"] == "from $PACS_KEY_PASSWORD"
    assert Destination.from_mapping(dicom(), 0).describe()["tls"] is False


@pytest.mark.parametrize(("keys", "message"), [
    ({"tls": True}, "tls = true needs ca_file"),
    ({"tls": "yes"}, "tls must be true or false, got 'yes'"),
    ({"tls": True, "ca_file": "CA", "certificate": "CERT"}, "certificate and private_key go together"),
    ({"tls": True, "ca_file": "CA", "key_password_env": "PACS_KEY_PASSWORD"}, "private_key is empty"),
    ({"tls": True, "ca_file": "CA", "certificate": "CERT", "private_key": "KEY", "key_password_env": "s3cret!"},
     "must be the NAME of an environment variable"),
    ({"tls": True, "ca_file": "CA", "server_name": "pacs example"}, "server_name must be a host name"),
    ({"ca_file": "CA", "server_name": "pacs"}, "ca_file, server_name only apply with tls = true"),
    ({"tls": False, "certificate": "CERT", "private_key": "KEY"}, "certificate, private_key only apply with tls"),
    ({"tls": True, "ca_file": "/no/such/ca.pem"}, "ca_file /no/such/ca.pem cannot be read"),
    ({"tls_ca": "CA"}, "unknown key(s) tls_ca"),
])
def test_a_bad_tls_destination_is_refused_saying_what_to_fix(pem: dict[str, str], keys: dict[str, Any],
                                                             message: str) -> None:
    files = {"CA": pem["ca_file"], "CERT": pem["certificate"], "KEY": pem["private_key"]}   # readable stand-ins
    keys = {k: files.get(v, v) if isinstance(v, str) else v for k, v in keys.items()}
    with pytest.raises(ConfigError, match=r"'pacs'|entry 0") as info:
        Destination.from_mapping(dicom(**keys), 0)
    assert message in str(info.value)


@pytest.mark.parametrize("keys", [{"tls": True}, {"ca_file": "x.pem"}, {"server_name": "orthanc"}])
def test_tls_keys_on_an_orthanc_rest_destination_are_refused_by_name(keys: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        Destination.from_mapping({"name": "rest", "kind": "orthanc-rest", "url": "http://orthanc:8042", **keys}, 0)
    assert f"{next(iter(keys))} apply to kind = \"dicom\" only" in str(info.value)
    assert "https://" in str(info.value)


def test_an_encrypted_key_without_key_password_env_is_refused_before_openssl_could_prompt(
        pem: dict[str, str], tmp_path: Path) -> None:
    key = tmp_path / "locked.key"
    key.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIF\n-----END ENCRYPTED PRIVATE KEY-----\n")
    dest = Destination.from_mapping(dicom(tls=True, **{**pem, "private_key": str(key)}), 0)
    with pytest.raises(ConfigError, match="is encrypted: set key_password_env"):
        dest.tls_context()


def test_key_password_env_must_be_set_when_the_context_is_built(pem: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGNODE_TEST_UNSET_KEY_PASSWORD", raising=False)
    dest = Destination.from_mapping(dicom(tls=True, key_password_env="SEGNODE_TEST_UNSET_KEY_PASSWORD", **pem), 0)
    with pytest.raises(ConfigError, match=r"environment variable SEGNODE_TEST_UNSET_KEY_PASSWORD .* is not set"):
        dest.tls_context()


def test_a_pem_that_does_not_load_is_a_config_error_naming_the_destination(pem: dict[str, str]) -> None:
    dest = Destination.from_mapping(dicom(tls=True, **pem), 0)
    with pytest.raises(ConfigError, match=r"\[\[destinations\]\] 'pacs': TLS client files"):
        dest.tls_context()


def test_a_config_file_with_a_tls_destination_loads(pem: dict[str, str], tmp_path: Path) -> None:
    settings = node_settings(tmp_path, f"""
[[destinations]]
name = "pacs"
kind = "dicom"
host = "pacs.example.org"
port = 2762
ae_title = "PACS"
tls = true
ca_file = "{pem['ca_file']}"
certificate = "{pem['certificate']}"
private_key = "{pem['private_key']}"
server_name = "pacs.internal"
""")
    dest = settings.destination("pacs")
    assert (dest.tls, dest.tls_server_name) == (True, "pacs.internal")
    assert settings.describe()["destinations"][0]["server_name"] == "pacs.internal"
