"""/docs and /redoc load nothing from outside: every script, stylesheet and icon they name is served by
the service itself (fastapi-offline's bundled copies), with auth on and no token."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from duet.cloud.docs import ASSETS, asset_folder

TOKEN = "docs-offline-token-0123456789abcdef"


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_need_nothing_from_outside(duet_run: Path, page: str) -> None:
    from fastapi.testclient import TestClient

    from duet.cloud import Settings, create_app

    client = TestClient(create_app(Settings(run=duet_run, tokens=[TOKEN], rate_limit=1000)))  # no token sent below
    answer = client.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    html = answer.text
    assert not re.search(r"(https?:)?//[a-z0-9]", html, flags=re.I), "the page names an outside address"
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert len(references) >= 2, references  # a script, and a stylesheet or an icon
    for reference in references:
        assert reference.startswith("/"), reference
        served = client.get(reference)
        name = reference.rsplit("/", 1)[1]
        assert served.status_code == 200, reference
        assert served.headers["content-type"].split(";")[0] == ASSETS[name], reference
        assert served.content == (asset_folder() / name).read_bytes(), reference
    if page == "/docs":
        assert {"swagger-ui-bundle.js", "swagger-ui.css"} <= {r.rsplit("/", 1)[1] for r in references}
        assert '"validatorUrl": null' in html  # Swagger UI would otherwise ask an online validator
        assert client.get("/docs/oauth2-redirect").status_code == 200
    else:
        assert "redoc.standalone.js" in {r.rsplit("/", 1)[1] for r in references}
    spec_url = re.search(r"""(?:url|spec-url)\s*[:=]\s*["'](/[^"']*)["']""", html).group(1)
    assert spec_url == "/openapi.json" and client.get(spec_url).status_code == 200
    assert client.get("/v1/models").status_code == 401  # the docs are open, the API is not
