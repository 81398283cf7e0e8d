"""The OpenAPI document of the management API and a self-contained docs page (no CDN)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from iotgate import __version__


def build_document() -> dict[str, Any]:
    from iotgate.admin.api import ROUTES

    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        for method in sorted((route.methods or set()) - {"HEAD"}):
            doc = (route.endpoint.__doc__ or route.name.replace("_", " ")).strip().splitlines()[0]
            path = route.path.replace("{product_key}", "{productKey}").replace("{device_name}", "{deviceName}")
            path = path.replace("{sub_product_key}", "{subProductKey}").replace("{sub_device_name}", "{subDeviceName}")
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _path_params(path)
            ]
            paths.setdefault(path, {})[method.lower()] = {
                "summary": doc,
                "operationId": f"{route.name}_{method.lower()}",
                "parameters": params,
                "responses": {"default": {"description": 'JSON; errors are {"error": {"code", "message"}}'}},
            }
    return {
        "openapi": "3.1.0",
        "info": {"title": "iotgate management API", "version": __version__},
        "components": {"securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}}},
        "security": [{"adminKey": []}],
        "paths": paths,
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


async def openapi_json(request: Request) -> Response:
    return JSONResponse(build_document())


DOCS_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>iotgate API</title>
<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}code{background:#eee;padding:0 .3em}
li{margin:.3em 0}</style></head><body><h1>iotgate management API</h1>
<p>OpenAPI document: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.
Send <code>Authorization: Bearer &lt;admin key&gt;</code>.</p><ul id="ops"></ul>
<script>fetch('/api/v1/openapi.json').then(r=>r.json()).then(d=>{const ul=document.getElementById('ops');
for(const [p,ms] of Object.entries(d.paths))for(const [m,o] of Object.entries(ms)){const li=document.createElement('li');
li.innerHTML='<code>'+m.toUpperCase()+' '+p+'</code> — '+o.summary;ul.appendChild(li);}});</script></body></html>"""


async def docs_page(request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


def openapi_routes() -> list[Route]:
    return [Route("/api/v1/openapi.json", openapi_json), Route("/api/v1/docs", docs_page)]
