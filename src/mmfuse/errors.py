"""Errors that the entry points turn into one clear line instead of a traceback."""


class MMFuseError(Exception):
    """A problem the user can fix (bad config value, missing file, unavailable weights).

    The message names what is wrong (file / field / value) and how to fix it.
    """
