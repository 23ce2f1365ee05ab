"""The route template the API's metrics are labelled with (:func:`route_template`), from
scopes as the router leaves them: a parameter's value is put back as ``{name}``, a mount
is its prefix, the app's own root path is left out, and whatever cannot be matched to a
route is ``unmatched``, never the path a client sent."""

from __future__ import annotations

from typing import Any

import pytest

from brokerscan.api.instrument import UNMATCHED, route_template


@pytest.mark.parametrize(("scope", "template"), [
    ({"path": "/api/v1/hosts/10.1.2.3", "endpoint": 1, "path_params": {"ip": "10.1.2.3"}},
     "/api/v1/hosts/{ip}"),
    ({"path": "/api/v1/count", "endpoint": 1, "path_params": {}}, "/api/v1/count"),
    ({"path": "/sweeps/sw-1/shards/sw-1", "endpoint": 1,
      "path_params": {"sweep": "sw-1", "shard": "sw-1"}}, "/sweeps/{sweep}/shards/{shard}"),
    ({"path": "/api/v1/sweeps/v1", "endpoint": 1, "path_params": {"sweep": "v1"}},
     "/api/v1/sweeps/{sweep}"),
    ({"path": "/api/v1/hosts/10.1.2.30", "endpoint": 1, "path_params": {"ip": "10.1.2.3"}},
     UNMATCHED),
    ({"path": "/assets/js/app.js", "endpoint": 1, "path_params": {"path": "js/app.js"}},
     "/assets/{path}"),
    ({"path": "/static/x.css", "root_path": "/static", "endpoint": 1, "path_params": {}},
     "/static"),
    ({"path": "/scan/api/v1/hosts/10.1.2.3", "root_path": "/scan", "app_root_path": "/scan",
      "endpoint": 1, "path_params": {"ip": "10.1.2.3"}}, "/api/v1/hosts/{ip}"),
    ({"path": "/no/such/10.1.2.3"}, UNMATCHED),
    ({"path": "/api/v1/hosts/10.1.2.3", "endpoint": 1, "path_params": {"ip": "10.9.9.9"}},
     UNMATCHED),
])
def test_route_template(scope: dict[str, Any], template: str) -> None:
    assert route_template({"type": "http", **scope}) == template
