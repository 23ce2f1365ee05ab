"""``python -m brokerscan.cli``: the same as the ``brokerscan`` command."""

import sys

from brokerscan.cli.main import main

sys.exit(main())
