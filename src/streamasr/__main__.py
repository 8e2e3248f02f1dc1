"""`python -m streamasr ...`: the same as the `streamasr` command."""

import sys

from streamasr.cli import main

sys.exit(main())
