"""The one exception type for errors a user can cause (bad paths, bad images, bad labels)."""


class CaptchaError(Exception):
    """A problem with the user's input; the CLI prints its message as one line and exits non-zero."""
