"""User-facing errors: one line on stderr and exit code 2, no traceback."""
import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input (data, flags, files) that the user must fix."""


@contextmanager
def exit_on_user_error(prog):
    """Turn a UserError raised inside the block into `prog: error: ...` and exit code 2."""
    try:
        yield
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
