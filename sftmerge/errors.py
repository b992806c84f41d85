"""The one error type the CLI turns into a single line and a non-zero exit."""


class SftmergeError(Exception):
    """Bad input or an unrecoverable condition the user can fix; the message is the line shown."""
