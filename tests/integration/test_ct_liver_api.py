"""/api/models with a ct-liver folder: listed with its coded label; broken weights leave the node up and say why."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.builders.ct_liver_factory import fake_liver_folder
from tests.support import running_node


async def models_of(tmp_path: Path) -> list[dict]:
    async with (running_node(tmp_path, MODELS__DIR=str(tmp_path / "models")) as node,
                aiohttp.ClientSession(f"http://127.0.0.1:{node.http_port}") as http):
        return (await (await http.get("/api/models")).json())["models"]


async def test_api_lists_ct_liver_with_the_snomed_liver_label(tmp_path: Path) -> None:
    fake_liver_folder(tmp_path / "models")
    liver = next(m for m in await models_of(tmp_path) if m.get("name") == "ct-liver")
    assert liver["available"] and liver["modalities"] == ["CT"]
    assert liver["state"] == "ready"
    assert [(lb["number"], lb["name"], lb["category"], lb["type"], lb["type_code"]) for lb in liver["labels"]] == [
        (1, "Liver", "Anatomical Structure", "Liver", "SCT:10200004")]


async def test_corrupt_ct_liver_weights_leave_the_node_up_and_the_model_unavailable(tmp_path: Path) -> None:
    folder = fake_liver_folder(tmp_path / "models")
    (folder / "model.pt").write_bytes(b"\0" * 100)
    models = await models_of(tmp_path)
    assert any(m.get("name") == "ct-basic" and m["available"] for m in models)
    broken = [m for m in models if not m["available"]]
    assert len(broken) == 1 and broken[0]["name"] == "ct-liver" and broken[0]["state"] == "unavailable"
    assert broken[0]["reason"].startswith("weight file model.pt")
    assert "corrupt" in broken[0]["reason"] and "segnode models install ct-liver" in broken[0]["reason"]
