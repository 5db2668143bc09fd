"""A real, prebuilt OHIF (npm `@ohif/app`, pinned) served beside a real Orthanc's DICOMweb.

The package is fetched once with `npm pack` into a cache outside the repository (never committed)
and checked against the registry's sha512. `OhifServer` serves its dist/ with a generated
app-config.js and reverse-proxies /dicom-web/ to Orthanc on the same origin, the layout the README
describes; Segnode stays on its own origin (cors_origins + a viewer token), the cross-origin one.
Given an SSL context (a certificate for 127.0.0.1) it serves the viewer over HTTPS, as a hospital's
nginx would; Orthanc behind it stays on plain HTTP on loopback, as behind `proxy_pass`.

    python -m tests.peers.ohif          # fetch only (what `make ohif` runs)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
CACHE = Path(os.environ.get("SEGNODE_OHIF_CACHE", Path.home() / ".cache" / "segnode" / "ohif"))


def ohif_dist() -> Path:
    """The built viewer (dist/ of @ohif/app OHIF_VERSION), fetched from npm on first use."""
    dist = CACHE / OHIF_VERSION / "package" / "dist"
    if (dist / "index.html").exists():
        return dist
    CACHE.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed once to fetch the OHIF viewer (Node.js 18+)")
    out = subprocess.run([npm, "pack", f"{OHIF_PACKAGE}@{OHIF_VERSION}", "--silent"], cwd=CACHE,
                         capture_output=True, text=True, timeout=600, check=True)
    tgz = CACHE / out.stdout.strip().splitlines()[-1]
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    if digest != OHIF_INTEGRITY:
        tgz.unlink()
        raise RuntimeError(f"{tgz.name}: sha512 {digest} is not the pinned {OHIF_INTEGRITY}")
    target = CACHE / f".{OHIF_VERSION}.part"
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(tgz) as tar:
        tar.extractall(target, filter="data")
    os.replace(target, CACHE / OHIF_VERSION)
    return dist


def app_config(ohif_origin: str, segnode_origin: str, token: str) -> str:
    """An app-config.js for a hospital's OHIF with Segnode installed: the extension line, the
    `segnode` key, the optional panel placement, and Orthanc's DICOMweb on the viewer's origin."""
    dicomweb = f"{ohif_origin}/dicom-web"
    config: dict[str, Any] = {
        "routerBasename": "/",
        "showStudyList": True,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "investigationalUseDialog": {"option": "never"},
        "extensions": [f"{segnode_origin}/ohif/segnode-ohif.mjs"],
        "modes": [],
        "segnode": {"wsUrl": f"{segnode_origin.replace('http', 'ws', 1)}/ws/jobs", "token": token},
        "customizationService": {"mode": {"*": {"rightPanels": {"$push": ["segnode.panelModule.jobs"]}}}},
        "defaultDataSourceName": "orthanc",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "orthanc",
            "configuration": {
                "friendlyName": "Orthanc", "name": "orthanc",
                "wadoUriRoot": dicomweb, "qidoRoot": dicomweb, "wadoRoot": dicomweb,
                "qidoSupportsIncludeField": False, "imageRendering": "wadors", "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True, "supportsFuzzyMatching": False, "supportsWildcard": True,
                "bulkDataURI": {"enabled": True}, "omitQuotationForMultipartRequest": True,
            },
        }],
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"


class OhifServer:
    """dist/ + app-config.js + /dicom-web/ proxied to Orthanc, on a free loopback port, in a thread
    (HTTPS with `ssl_context`, a server context holding the viewer's certificate)."""

    def __init__(self, dist: Path, orthanc_url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.dist = dist
        self.orthanc_url = orthanc_url
        self.ssl_context = ssl_context
        self.config_js = ""
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="ohif-server", daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> OhifServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.cleanup_ctx.append(self._client_ctx)
        app.router.add_get("/app-config.js", self._config)
        app.router.add_route("*", "/dicom-web/{tail:.*}", self._proxy)
        app.router.add_get("/{tail:.*}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _client_ctx(self, app: web.Application) -> Any:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        yield
        await self._session.close()

    async def _config(self, request: web.Request) -> web.Response:
        return web.Response(text=self.config_js, content_type="text/javascript")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        path = (self.dist / tail).resolve()
        if tail and path.is_file() and path.is_relative_to(self.dist):
            return web.FileResponse(path)
        return web.FileResponse(self.dist / "index.html")      # the viewer's own routes (/viewer?...)

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        """The reverse proxy a hospital puts in front of its PACS's DICOMweb: same origin as the viewer."""
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("accept", "content-type")}
        async with self._session.request(request.method, f"{self.orthanc_url}{request.rel_url}", headers=headers,
                                         data=await request.read()) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for key in ("Content-Type", "Content-Encoding"):
                if key in upstream.headers:
                    response.headers[key] = upstream.headers[key]
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(1 << 16):
                await response.write(chunk)
            await response.write_eof()
            return response


if __name__ == "__main__":
    print(ohif_dist())
