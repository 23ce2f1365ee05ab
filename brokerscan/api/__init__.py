"""The REST API (``brokerscan serve``): FastAPI routes over the same query layer as the CLI
(:mod:`storage.searcher`), one router per resource in :mod:`brokerscan.api.routes`; the app
is built by :func:`brokerscan.api.app.build_app`."""
