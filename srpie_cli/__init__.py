"""srpie: batch photo retouching with Deep SR-PIE (joint 2x super-resolution and enhancement)."""

__version__ = "0.1.0"


class SrpieError(Exception):
    """A problem the user can act on: bad input, a refused file, a missing model.

    Raised inside the library; the CLI turns it into a one-line message and an exit code.
    """


class Refused(SrpieError):
    """A photo this run cannot take (more pixels than ``--max-megapixels``, not enough memory
    now): named as any failure, but not remembered as the file's own, since another run, with
    other settings or more memory free, may take it."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type when empty), at most 160 characters."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]
