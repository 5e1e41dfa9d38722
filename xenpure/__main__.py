"""``python -m xenpure``: the same as the ``xenpure`` command."""

import sys

from .cli import main

sys.exit(main())
