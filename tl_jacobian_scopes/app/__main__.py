"""``python -m tl_jacobian_scopes.app [options]``: the same as ``tl-jacobian-scopes app [options]``
(see ``--help``)."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["app", *sys.argv[1:]]))
