"""A real Orthanc (Debian package) on free loopback ports, temp storage, stopped by PID; DICOM TLS on request."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers.helpers import REPO, free_port, peer_env, scaled, tool, wait_until

LUA = REPO / "config" / "orthanc" / "forward-to-segnode.lua"
PLUGINS = Path("/usr/share/orthanc/plugins")
FAST_RETRY = "[outbox]\nretry_initial_s = 0.5\nretry_max_s = 1.0\n"     # node config: retry soon after a refusal


@dataclass(frozen=True)
class TlsFiles:
    """Orthanc's DICOM TLS (1.9+): its certificate and key, a PEM bundle of the CAs it trusts, and whether a
    calling AE must present a certificate those CAs issued. With TLS on, its DICOM port speaks TLS only, and
    each failed handshake is logged as "Receiving Association failed: TLS error: <reason>"."""
    certificate: Path
    private_key: Path
    trusted: Path
    client_certificate_required: bool = True


class OrthancProcess:
    def __init__(self, workdir: Path, *, segnode_port: int | None = None, users: dict[str, str] | None = None,
                 stable_age_s: int = 1, check_called_aet: bool = True, tls: TlsFiles | None = None) -> None:
        self.workdir = workdir
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.ae_title = "ORTHANC"
        self.users = users or {}
        self.config: dict[str, Any] = {
            "Name": "TestPACS", "DicomAet": self.ae_title, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
            "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
            "StableAge": stable_age_s, "DicomCheckCalledAet": check_called_aet,
            "Plugins": [str(PLUGINS)] if PLUGINS.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {}, "HttpTimeout": 10, "DicomScuTimeout": 10,
        }
        if tls is not None:
            self.config.update(DicomTlsEnabled=True, DicomTlsCertificate=str(tls.certificate),
                               DicomTlsPrivateKey=str(tls.private_key), DicomTlsTrustedCertificates=str(tls.trusted),
                               DicomTlsRemoteCertificateRequired=tls.client_certificate_required)
        self.tls = tls
        if segnode_port is not None:
            self.forward_to(segnode_port)
        self.proc: subprocess.Popen[bytes] | None = None

    def forward_to(self, segnode_port: int, *, tls: bool = False) -> None:
        """Register Segnode as modality "segnode" (over DICOM TLS with `tls`: Orthanc then presents its own
        certificate as the client one) and load the forwarding rule from config/orthanc/."""
        self.config["DicomModalities"] = {"segnode": (
            {"AET": "SEGNODE", "Host": "127.0.0.1", "Port": segnode_port, "UseDicomTls": True} if tls
            else ["SEGNODE", "127.0.0.1", segnode_port])}
        self.config["LuaScripts"] = [str(LUA)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> OrthancProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config))
        with open(self.workdir / "orthanc.log", "ab") as log:
            self.proc = subprocess.Popen([tool("Orthanc"), str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                         env=peer_env())

        def alive() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited: {self.log()[-2000:]}")
            try:
                self.get("/system")
                return True
            except OSError:
                return False
        wait_until(alive, 30, "Orthanc to answer /system", interval_s=0.1)
        return self

    def _request(self, path: str, data: bytes | None = None, method: str | None = None) -> Any:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self.users:
            user, pwd = next(iter(self.users.items()))
            req.add_header("Authorization", "Basic " + b64encode(f"{user}:{pwd}".encode()).decode())
        with urllib.request.urlopen(req, timeout=scaled(10)) as rsp:
            body = rsp.read()
            return json.loads(body) if body[:1] in (b"{", b"[") else body

    def get(self, path: str) -> Any:
        return self._request(path)

    def post(self, path: str, body: object) -> Any:
        """POST `body` as JSON; Orthanc's answer, decoded when it is JSON."""
        return self._request(path, data=json.dumps(body).encode(), method="POST")

    def delete_all_instances(self) -> None:
        for instance_id in self.get("/instances"):
            self._request(f"/instances/{instance_id}", method="DELETE")

    def instances_of_modality(self, modality: str) -> list[dict[str, Any]]:
        out = []
        for series_id in self.get("/series"):
            series = self.get(f"/series/{series_id}")
            if series["MainDicomTags"].get("Modality") == modality:
                out += [self.get(f"/instances/{i}") for i in series["Instances"]]
        return out

    def modalities_in_study(self, study_instance_uid: str) -> set[str]:
        """The modalities of the series Orthanc holds for a study (empty if it has none)."""
        found = self._request("/tools/lookup", study_instance_uid.encode(), "POST")
        return {self.get(f"/series/{series_id}")["MainDicomTags"].get("Modality", "")
                for hit in found if hit["Type"] == "Study"
                for series_id in self.get(f"/studies/{hit['ID']}")["Series"]}

    def file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file")

    def log(self) -> str:
        p = self.workdir / "orthanc.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def dicom_dest(o: OrthancProcess, ae_title: str | None = None, **tls: str | Path) -> str:
    """A node `[[destinations]]` table (without the header) named "pacs" that sends to this Orthanc; `tls` keys
    (ca_file, certificate, private_key, key_password_env, server_name) make it a DICOM TLS destination."""
    table = (f'name = "pacs"\nkind = "dicom"\nhost = "127.0.0.1"\nport = {o.dicom_port}\n'
             f'ae_title = "{ae_title or o.ae_title}"')
    if tls:
        table += "\ntls = true" + "".join(f'\n{key} = "{value}"' for key, value in tls.items())
    return table


def results_in(o: OrthancProcess, count: int = 1, timeout_s: float = 60) -> tuple[list[dict], list[dict]]:
    """The SEG and SR instances in Orthanc once it holds at least `count` of each."""
    def both():
        seg, sr = o.instances_of_modality("SEG"), o.instances_of_modality("SR")
        return (seg, sr) if len(seg) >= count and len(sr) >= count else None
    return wait_until(both, timeout_s, "SEG and SR in Orthanc", interval_s=0.5)
