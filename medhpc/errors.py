"""Error types shared by every medhpc module.

Command-line entry points catch :class:`MedhpcError` and print its message alone
(no traceback): the message must name the culprit (file, key, id) on its own.
"""


class MedhpcError(Exception):
    """Base class for errors caused by the user's inputs, not by medhpc itself."""
