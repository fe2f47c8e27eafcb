"""Errors users see. Each carries a message meant to be printed as-is, no stack trace needed."""


class OpenSDError(Exception):
    """Base class for every error opensd raises on purpose."""


class CheckpointError(OpenSDError):
    """A weight file or folder that cannot be read, is damaged, or is not a model we know."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OutOfMemoryForModel(CheckpointError):
    """A model whose weights would not fit the memory that is free now (pipeline/ram_fit.py)."""


class InvalidArgument(OpenSDError, ValueError):
    """A user-supplied parameter outside its allowed range; the message names the parameter."""


def run_main(main, argv=None, prog: str = "opensd") -> int:
    """Run a command-line entry point ``main(argv)`` so that a user's mistake never shows a stack
    trace: an OpenSDError ends as one line on stderr (exit status 2), Ctrl-C as "interrupted" (130),
    and a reader that stops early (``| head``) ends the output quietly."""
    import os
    import sys

    try:
        return main(argv) or 0
    except OpenSDError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command that `head` cut short
