"""Ctrl-C while a command is still starting (torch alone takes seconds to import): one line
`prog: error: interrupted` and exit code 130, as runfiles.exit_on_user_error gives once main runs, instead
of a KeyboardInterrupt traceback from inside an import.  Torch-free, so that every entry point can take
Ctrl-C over before its other imports:

    from metagmvae.startup import quiet_ctrl_c  # noqa: E402
    quiet_ctrl_c(__name__, "omniglot/main.py")

exit_on_user_error gives Ctrl-C back to Python (KeyboardInterrupt) when it starts, so that what runs
inside it (a training run saying where it can resume) sees it as before.
"""
import os
import signal
import sys

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as runfiles.Interrupted
_handler = None  # the SIGINT handler quiet_ctrl_c installed, while installed
_command = False  # whether quiet_ctrl_c took Ctrl-C over: this process runs an entry point as a command


def quiet_ctrl_c(module_name, prog=None):
    """When module_name is "__main__" (the entry point runs as a command, not imported by another module or a
    test), turn a Ctrl-C into one line `prog: error: interrupted` (prog: default the script's file name, as
    argparse) and exit code 130 until end_quiet_ctrl_c.  A Ctrl-C that the shell ignores (a background job)
    stays ignored."""
    global _handler, _command
    if module_name != "__main__" or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return
    _command = True
    message = f"{prog or os.path.basename(sys.argv[0])}: error: interrupted\n".encode()

    def interrupted(signum, frame):
        os.write(2, message)
        os._exit(INTERRUPTED_EXIT_CODE)  # nothing written yet: no cleanup to run, and none half-imported

    _handler = interrupted
    signal.signal(signal.SIGINT, interrupted)


def end_quiet_ctrl_c():
    """Give Ctrl-C back to Python (KeyboardInterrupt) where quiet_ctrl_c took it."""
    global _handler
    if _handler is not None and signal.getsignal(signal.SIGINT) is _handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _handler = None


def ignore_ctrl_c_from_now():
    """In a command (where quiet_ctrl_c took Ctrl-C over), ignore Ctrl-C from here on: call once its work is
    done or refused, when what remains is Python's exit, whose handlers (torch's) would print a
    KeyboardInterrupt traceback and exit 0."""
    if _command:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
