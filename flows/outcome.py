"""How a flow ends on a user error: Failed, with the error's one sentence as the state's
message (the command line prints it and exits 2), instead of a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.states import Failed

from pipeline_lib.base.errors import SoundopsError


def failed_on_user_error(body: Callable[..., dict[str, Any]], *args: Any) -> Any:
    try:
        return body(*args)
    except SoundopsError as exc:
        return Failed(message=str(exc))
