"""The one exception type that user-facing code raises for bad input.

A ``CkaLabError`` carries a message that says, in one line, what was wrong and what to do. The CLI
prints it as ``cka-lab: error: <message>`` and exits with status 2, without a traceback.
"""


class CkaLabError(Exception):
    """Bad input or a state the user can fix: the message is one line, with the fix in it."""
