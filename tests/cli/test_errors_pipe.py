"""A reader that closes the pipe (``cka-lab info FILE | head``) ends a command quietly, without a traceback."""

from __future__ import annotations

import subprocess
import sys


def test_a_closed_pipe_ends_the_command_quietly():
    code = ("import sys\nfrom cka_lab.errors import run_reporting_errors\n"
            "def emit():\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "sys.exit(run_reporting_errors(emit))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 141 and done.stderr == ""
