"""/docs and /redoc work on an air-gapped host: every asset they load is served by Visage."""

from __future__ import annotations

import re

import pytest

from .conftest import Server


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_load_nothing_from_another_host(server: Server, page: str) -> None:
    with server.client() as client:
        html = client.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        scripts = [a for a in assets if a.endswith(".js")]
        assert scripts, html.text  # the page does load its JavaScript ...
        for url in assets:
            assert not re.match(r"(https?:)?//", url), f"{page} loads {url} from another host"
            got = client.get(url)  # ... from this server
            assert got.status_code == 200 and len(got.content) > 1000, (url, got.status_code)
        assert client.get("/openapi.json").json()["info"]["title"] == "Visage"
