"""The web dashboard (``brokerscan serve`` answers it at ``/``, beside the API): static
pages and small JavaScript modules that read the JSON API and nothing else, as the CLI
does; every asset ships in this package (no CDN, no tile server).
:func:`brokerscan.web.app.mount_dashboard` adds it to the API's app."""
