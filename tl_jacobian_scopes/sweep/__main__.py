"""``python -m tl_jacobian_scopes.sweep`` (and ``torchrun -m tl_jacobian_scopes.sweep``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
