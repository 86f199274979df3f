"""The project's user-facing error type.

A `UserError` is an input the caller can fix (a bad name, path, value or option). Its message is one line that
names the bad value and, where possible, the fix. The CLI prints it as one line on stderr and exits with status 2;
library callers catch it as the `ValueError` it is.
"""
from __future__ import annotations


class UserError(ValueError):
    """A bad input, reported as one line naming the value and the fix."""
