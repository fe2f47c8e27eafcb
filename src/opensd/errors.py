"""Errors users see. Each carries a message meant to be printed as-is, no stack trace needed."""


class OpenSDError(Exception):
    """Base class for every error opensd raises on purpose."""


class CheckpointError(OpenSDError):
    """A weight file or folder that cannot be read, is damaged, or is not a model we know."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InvalidArgument(OpenSDError, ValueError):
    """A user-supplied parameter outside its allowed range; the message names the parameter."""
