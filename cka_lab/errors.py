"""The one exception type that user-facing code raises for bad input.

A ``CkaLabError`` carries a message that says, in one line, what was wrong and what to do. The CLI
prints it as ``cka-lab: error: <message>`` and exits with status 2, without a traceback.
"""


class CkaLabError(Exception):
    """Bad input or a state the user can fix: the message is one line, with the fix in it."""


def run_reporting_errors(func, *args) -> int:
    """Call ``func(*args)``; print a :class:`CkaLabError` as one line (exit 2), Ctrl-C as exit 130; a
    reader that closed the pipe (``cka-lab info FILE | head``) ends the command quietly (exit 141, as
    after SIGPIPE)."""
    import os
    import sys

    try:
        return int(func(*args) or 0)
    except CkaLabError as exc:
        print(f"cka-lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cka-lab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the rest of the output has nowhere to go: point stdout at /dev/null so that the interpreter's
        # final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
