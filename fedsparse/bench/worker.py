"""One run of a suite in its own process (``fedsparse bench --parallel N``): the request's config,
run by ``run_experiment`` into the given folder; a user error is one line on stderr."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fedsparse.errors import FedsparseError


def main(argv: list[str]) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    from fedsparse.config import load_config
    from fedsparse.simulation.runner import run_experiment

    request, folder = Path(argv[0]), Path(argv[1])
    try:
        run_experiment(load_config(request), run_dir=folder.resolve())
    except FedsparseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
