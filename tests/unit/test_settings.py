from pathlib import Path

import pytest

from node.errors import ConfigError
from node.settings import DEFAULTS_FILE, load_settings, mask_url


def test_embedded_defaults_match_the_design() -> None:
    s = load_settings(env={})
    assert s.dicom.ae_title == "SEGNODE"
    assert s.dicom.port == 11112
    assert (s.http.host, s.http.port) == ("127.0.0.1", 8080)
    assert s.node.data_path == Path("./data").resolve()
    assert s.store_url.startswith("sqlite+aiosqlite:///")
    assert [r.model for r in s.rules] == ["ct-basic"]


def test_environment_overrides_file_which_overrides_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text('[dicom]\nport = 11200\nae_title = "FROMFILE"\n')
    s = load_settings(cfg, env={"SEGNODE_DICOM__PORT": "11113", "SEGNODE_DICOM__ALLOWED_CALLING_AES": "A1, B2"})
    assert s.dicom.port == 11113
    assert s.dicom.ae_title == "FROMFILE"
    assert s.dicom.allowed_calling_aes == ("A1", "B2")


def test_every_default_is_written_in_the_defaults_file() -> None:
    text = DEFAULTS_FILE.read_text()
    s = load_settings(env={})
    for section, values in s.describe().items():
        if section == "rules":
            continue
        for key in values:
            assert f"\n{key} = " in text, f"[{section}] {key} is not documented in config/segnode.toml"


@pytest.mark.parametrize(("env", "message"), [
    ({"SEGNODE_DICOM__PORT": "70000"}, "[dicom] port must be a TCP port 0-65535, got 70000"),
    ({"SEGNODE_DICOM__PORT": "eleven"}, "[dicom] port must be an integer, got 'eleven'"),
    ({"SEGNODE_DICOM__AE_TITLE": "A" * 17}, "[dicom] ae_title must be 1-16"),
    ({"SEGNODE_DICOM__REQUIRE_CALLED_AE": "maybe"}, "[dicom] require_called_ae must be true or false"),
    ({"SEGNODE_DICOM__STUDY_QUIET_PERIOD_S": "0"}, "[dicom] study_quiet_period_s must be"),
    ({"SEGNODE_COMPUTE__BACKEND": "spark"}, "[compute] backend must be 'local' or 'ray'"),
    ({"SEGNODE_DICOM__COLOUR": "red"}, "[dicom] has unknown key(s) colour"),
    ({"SEGNODE_COMPUTE__BACKEND": "ray", "SEGNODE_COMPUTE__WORKERS": "3"},
     "[compute] 3 workers x 1 ray_cpus_per_actor do not fit in ray_num_cpus = 2"),
    ({"SEGNODE_COMPUTE__BACKEND": "ray", "SEGNODE_COMPUTE__WORKERS": "0"},
     "[compute] workers = 0 (one actor per GPU) needs backend = \"ray\" and ray_gpus_per_actor > 0"),
    ({"SEGNODE_COMPUTE__RAY_ADDRESS": "ray-head"}, "[compute] ray_address must be the Ray head's \"host:port\""),
    ({"SEGNODE_COMPUTE__RAY_ADDRESS": "ray://head:10001"}, "is a Ray Client address, which Segnode does not use"),
    ({"SEGNODE_NOPE__X": "1"}, "unknown section [nope]"),
    ({"SEGNODE_DICOM__RECEIVER": "pynetdicom"}, "[dicom] receiver: the node has one receiver since 2026-12"),
    ({"SEGNODE_DICOM__RECEIVER_PROCESSES": "2"}, "[dicom] receiver_processes: receiver processes were removed"),
])
def test_a_bad_value_names_the_key_the_value_and_what_is_allowed(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert message in str(info.value)


def test_a_config_file_with_a_removed_key_says_what_became_of_it(tmp_path: Path) -> None:
    config = tmp_path / "segnode.toml"
    config.write_text('[dicom]\nreceiver = "threads"\n')
    with pytest.raises(ConfigError, match=r"^\[dicom\] receiver: the node has one receiver .*delete the line$"):
        load_settings(config, env={})


def test_rules_in_a_config_file_replace_the_default_rules(tmp_path: Path) -> None:
    cfg = tmp_path / "rules.toml"
    cfg.write_text('[[rules]]\nname = "mr"\nmodel = "brain"\nmatch = { modality = ["MR"] }\n')
    s = load_settings(cfg, env={})
    assert [r.name for r in s.rules] == ["mr"]


def test_a_bad_rule_is_refused_with_its_name(tmp_path: Path) -> None:
    cfg = tmp_path / "rules.toml"
    cfg.write_text('[[rules]]\nname = "broken"\nmodel = "m"\nmatch = { series_description = "(" }\n')
    with pytest.raises(ConfigError, match=r"'broken' match\.series_description is not a valid regex"):
        load_settings(cfg, env={})


def test_store_password_is_masked_in_the_description() -> None:
    s = load_settings(env={"SEGNODE_STORE__URL": "postgresql+asyncpg://segnode:s3cret@db/segnode"})
    assert "s3cret" not in str(s.describe())
    assert s.describe()["store"]["url"] == "postgresql+asyncpg://segnode:***@db/segnode"


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql+asyncpg://segnode@db/segnode", "postgresql+asyncpg://segnode@db/segnode"),
    ("postgresql+asyncpg://db:5433/seg?user=s&password=pw&ssl=require",
     "postgresql+asyncpg://db:5433/seg?user=s&password=***&ssl=require"),
])
def test_a_url_without_a_password_is_shown_as_it_is_and_a_query_password_is_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_a_password_in_a_config_file_is_refused_but_the_environment_may_hold_it(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text('[store]\nurl = "postgresql+asyncpg://segnode:s3cret@db/segnode"\n')
    with pytest.raises(ConfigError, match=r"holds a password \(postgresql\+asyncpg://segnode:\*\*\*@db/segnode\); "
                                          r"put the whole URL in SEGNODE_STORE__URL") as caught:
        load_settings(cfg, env={})
    assert "s3cret" not in str(caught.value)
    cfg.write_text('[store]\nurl = "postgresql+asyncpg://segnode@db/segnode"\n')
    env = {"SEGNODE_STORE__URL": "postgresql+asyncpg://segnode:s3cret@db/segnode"}
    assert load_settings(cfg, env=env).store_url == env["SEGNODE_STORE__URL"]


@pytest.mark.parametrize(("env", "cpus"), [
    ({}, 2),                                                         # one local actor gets both CPUs
    ({"SEGNODE_COMPUTE__WORKERS": "2"}, 1),
    ({"SEGNODE_COMPUTE__RAY_NUM_CPUS": "8", "SEGNODE_COMPUTE__WORKERS": "3"}, 2),
    ({"SEGNODE_COMPUTE__RAY_ADDRESS": "head:6379"}, 1),               # a cluster's size is not ours to guess
    ({"SEGNODE_COMPUTE__RAY_ADDRESS": "head:6379", "SEGNODE_COMPUTE__RAY_CPUS_PER_ACTOR": "16"}, 16),
])
def test_each_ray_actor_gets_its_share_of_cpus(env: dict[str, str], cpus: int) -> None:
    assert load_settings(env={"SEGNODE_COMPUTE__BACKEND": "ray", **env}).compute.actor_cpus() == cpus
