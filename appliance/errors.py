"""The one base for what a person did wrong or can fix: the CLI prints it as one line."""


class UserError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""
