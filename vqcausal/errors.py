"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class VQCausalError(Exception):
    """A problem the user can fix (bad input, bad config, missing file); never a bug."""


class DataError(VQCausalError):
    """A data source, file or factor specification that cannot be used."""
