"""A sweep process on a tiny random model: ``python tests/sweep_worker.py KIND ARGS...``.

Launched by tests/test_sweep.py, alone or under ``python -m torch.distributed.run``: it builds
the same tiny model in every process (seeded) and runs the sweep command line with it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_model  # noqa: E402

from tl_jacobian_scopes.sweep.cli import main  # noqa: E402

if __name__ == "__main__":
    model = tiny_model(sys.argv[1], "bridge")[0]
    sys.exit(main(sys.argv[2:], model=model))
