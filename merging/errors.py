"""The one exception type of the toolkit: every bad input raises it with a message that names the
offending file / key / value and says what was expected."""


class MergeError(ValueError):
    """A merge cannot run as configured; the message says where and why."""
