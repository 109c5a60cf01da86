"""`python -m stagewise`: the same CLI as the `stagewise` command (what torchrun and
`accelerate launch -m` start)."""

import sys

from .cli import main

sys.exit(main())
