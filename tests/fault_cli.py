"""`luce-bench` with the test backends of faultkit.py registered, for fault tests that run it as a child process.

Use: python tests/fault_cli.py sweep --backends hangreal ...
With FAULTKIT_KILL_IN_RENDER=1 the process kills itself (SIGKILL) as it starts writing the run's report.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultkit import TEST_BACKENDS  # noqa: E402

from luce_bench import backends  # noqa: E402
from luce_bench.cli import main  # noqa: E402

backends.REGISTRY.update(TEST_BACKENDS)
if os.environ.get("FAULTKIT_KILL_IN_RENDER") == "1":
    from luce_bench import report

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    report.render = killed
main()
