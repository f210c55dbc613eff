"""``python -m vqpipe.cli``: the ``vqpipe`` command."""

import sys

from vqpipe.cli.app import main

sys.exit(main())
