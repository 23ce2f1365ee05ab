"""The ``brokerscan`` command line: one face over every stage.

``main.py`` builds the parser and dispatches; each module adds its commands and runs them:
``scan`` and ``demo`` (one process, here and now), ``sweep`` (distributed sweeps),
``fleet`` (the long-running ``worker`` and ``scheduler``), ``stream`` (``enrich-worker``,
``store-worker``, ``stream status``), ``db`` and ``lookup``. Every mistake ends the same way:
a :class:`~brokerscan.cli.errors.CliError`, one line on stderr, an exit code from
:mod:`brokerscan.cli.errors`. Nothing outside this package imports it.
"""
