"""`python -m remoe.cli`: the `remoe` command."""

import sys

from remoe.cli import main

sys.exit(main())
