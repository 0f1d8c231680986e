"""Deployments with schedules from ``release.schedules`` and the regression trigger, served
from this process against a long-running Prefect server (schedules and automations do not
run on a temporary one). With no ``PREFECT_API_URL``, ``soundops serve`` starts Prefect's
local server with its database under ``.soundops/prefect``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import Params
from pipeline_lib.release.tracking import STATE_DIR

log = logging.getLogger(__name__)


def deployments(root: Path, params: Params) -> list[Any]:
    """build and monitor on their cron schedules; retrain on the FAH-regression event."""
    from prefect.events import DeploymentEventTrigger
    from prefect.types.entrypoint import EntrypointType

    from flows.build import build
    from flows.monitor import EVENT, monitor, resource_id
    from flows.retrain import retrain

    sched = params.release.schedules
    args = {"root": str(root)}
    # by module path: the served runs import the installed package, whatever the cwd
    by_module = EntrypointType.MODULE_PATH
    out = []
    for fl, cron in ((build, sched.build), (monitor, sched.monitor)):
        kw: dict[str, Any] = {"parameters": args, "entrypoint_type": by_module}
        if cron:
            from prefect.schedules import Cron

            kw["schedule"] = Cron(cron, timezone=sched.timezone)
        out.append(fl.to_deployment(name=f"soundops-{fl.name}", **kw))
    trigger = DeploymentEventTrigger(
        expect={EVENT},
        match={"prefect.resource.id": resource_id(params.release.model_name)},
        parameters={"root": str(root), "reason": "{{ event.payload.reason }}"},
    )
    out.append(
        retrain.to_deployment(
            name="soundops-retrain", triggers=[trigger], entrypoint_type=by_module
        )
    )
    return out


def start_local_server(
    root: Path, port: int = 4200, timeout_s: float = 300.0
) -> subprocess.Popen[bytes]:
    """``prefect server start`` on 127.0.0.1 with its home in the project."""
    env = os.environ | {"PREFECT_HOME": str(root / STATE_DIR / "prefect")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SoundopsError(
                f"prefect server start exited with {proc.returncode}; is port {port} in use?"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    os.environ["PREFECT_API_URL"] = url
                    log.info("Prefect server at http://127.0.0.1:%d (UI and API)", port)
                    return proc
        except OSError:
            time.sleep(1.0)
    proc.terminate()
    raise SoundopsError(f"Prefect server did not answer on {url} within {timeout_s:.0f} s.")


def serve_forever(root: Path, params: Params) -> None:
    from prefect import serve

    serve(*deployments(root, params))
