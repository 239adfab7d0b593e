"""How every reid command ends on a mistake the user can fix: one message on stderr, exit status 2, no traceback.

A `ReidError` (bad config value, unusable dataset, unreadable checkpoint, ...) is the user's to fix, so its
message is all they need. `HYDRA_FULL_ERROR=1` shows the full traceback instead, as Hydra does for its own
errors; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from reid.errors import ReidError

USAGE_EXIT_STATUS = 2

F = TypeVar("F", bound=Callable)


def user_error_in(exc: BaseException) -> ReidError | None:
    """The ReidError behind `exc`, also when a library wrapped it (Hydra's instantiate, OmegaConf resolvers)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ReidError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def full_traceback_requested() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def exit_on_user_error(exc: BaseException, program: str) -> None:
    """If `exc` is (or wraps) a user error, print it as one line of `program` and exit 2; else return."""
    error = user_error_in(exc)
    if error is None or full_traceback_requested():
        return
    sys.stderr.write(f"{program}: error: {error}\n")
    sys.stderr.flush()
    raise SystemExit(USAGE_EXIT_STATUS) from None


def reports_user_errors(program: str) -> Callable[[F], F]:
    """Decorate a command's entry function so a user error ends it with one message and exit status 2."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                exit_on_user_error(exc, program)
                raise

        return wrapper  # type: ignore[return-value]

    return decorate
