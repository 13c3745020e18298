"""`luce-bench` with the test backends of faultkit.py registered, for fault tests that run it as a child process.

Use: python tests/fault_cli.py sweep --backends hangreal ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultkit import TEST_BACKENDS  # noqa: E402

from luce_bench import backends  # noqa: E402
from luce_bench.cli import main  # noqa: E402

backends.REGISTRY.update(TEST_BACKENDS)
main()
