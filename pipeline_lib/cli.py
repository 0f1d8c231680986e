"""``soundops``: the one command line. User errors print one sentence and exit non-zero."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.stages import STAGES, run_stage

if TYPE_CHECKING:
    from prefect import State

    from pipeline_lib.base.params import Params

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, measure and ship on-device sound detectors.",
)
params_app = typer.Typer(no_args_is_help=True, help="Inspect and check params.yaml.")
app.add_typer(params_app, name="params")
mine_app = typer.Typer(no_args_is_help=True, help="Review and accept mined hard negatives.")
app.add_typer(mine_app, name="mine")
models_app = typer.Typer(
    no_args_is_help=True, help="Registered model versions and release channels (MLflow)."
)
app.add_typer(models_app, name="models")
FLOWS = ("build", "retrain", "monitor")

ROOT_OPT = Annotated[Path, typer.Option("--root", help="Project folder (holds params.yaml).")]
# Markup off: messages carry file names, params values and model refs that may hold
# brackets, which rich would swallow or fail on.
err = Console(stderr=True, markup=False, highlight=False)


def _out() -> Console:
    """Standard output; wide when piped, so tables are not cut to 80 columns in logs."""
    if sys.stdout.isatty():
        return Console(markup=False)
    return Console(width=200, soft_wrap=True, markup=False)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("great_expectations", "urllib3", "matplotlib", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    _setup_logging(verbose)


def _fail(exc: SoundopsError) -> None:
    err.print(Text("error: ", style="bold red") + Text(str(exc)), soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(STAGES)}.")],
    root: ROOT_OPT = Path(),
) -> None:
    """Run one pipeline stage (what dvc.yaml calls)."""
    if name not in STAGES:
        _fail(SoundopsError(f"stage '{name}' does not exist; expected one of {', '.join(STAGES)}."))
    try:
        from pipeline_lib.release.tracking import epoch_logger

        run_stage(name, root.resolve(), epoch_logger() if name == "train" else None)
    except SoundopsError as exc:
        _fail(exc)


@params_app.command("check")
def params_check(root: ROOT_OPT = Path()) -> None:
    """Validate params.yaml against the pydantic model and print a summary."""
    from pipeline_lib.base.params import load_params

    try:
        params = load_params(Layout(root.resolve()).params)
    except SoundopsError as exc:
        _fail(exc)
        return
    from pipeline_lib.base.dvc_graph import uncovered_path_params

    if (root / "dvc.yaml").is_file():
        try:
            uncovered = uncovered_path_params(root.resolve(), params)
        except SoundopsError as exc:
            _fail(exc)
            return
        if uncovered:
            _fail(SoundopsError(" ".join(uncovered)))
            return
    table = Table(title="params.yaml is valid", show_header=True)
    table.add_column("key")
    table.add_column("value")
    table.add_row("labels", ", ".join(params.labels))
    table.add_row("audio.sample_rate", str(params.audio.sample_rate))
    table.add_row(
        "ingest.sources", ", ".join(f"{s.name} ({s.kind})" for s in params.ingest.sources)
    )
    table.add_row("split.ratios", str(params.split.ratios))
    _out().print(table)


@app.command()
def score(
    audio: Annotated[list[Path], typer.Argument(help="Audio files of any length.")],
    model: Annotated[
        Path,
        typer.Option(
            help="A model folder, an exported .onnx file, data/export/model_int8.tflite, or an "
            "ESPHome micro_wake_word manifest (.json, e.g. microWakeWord's own models)."
        ),
    ] = Path("data/model"),
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="calibration.json; default: the one inside the .onnx file, else "
            "data/calibration/calibration.json."
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Operating point (default: calibrated).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the results.")] = Path("scores"),
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    workers: Annotated[int, typer.Option(help="Processes over files; 0 = one per core.")] = 0,
) -> None:
    """Per-window scores and detected events of audio files, with the streaming detector."""
    from pipeline_lib.detect.file_scores import score_files

    if fmt not in ("csv", "json"):
        _fail(SoundopsError(f"--format: expected csv or json, got '{fmt}'."))
    try:
        n = workers or (os.cpu_count() or 1)
        summary = score_files(audio, model, calibration, preset, out, fmt, n)
    except SoundopsError as exc:
        _fail(exc)
        return
    table = Table(
        title=f"{summary['model']} ({summary['preset']}, threshold {summary['threshold']:.4f})"
    )
    for col in ("file", "seconds", "windows", "events"):
        table.add_column(col)
    for row in summary["files"]:
        table.add_row(row["file"], f"{row['seconds']:.1f}", str(row["windows"]), str(row["events"]))
    _out().print(table)
    _out().print(f"results in {out}")


@app.command("export-onnx")
def export_onnx_cmd(
    out: Annotated[Path, typer.Argument(help="The .onnx file to write.")],
    model: Annotated[Path, typer.Option(help="A model folder.")] = Path("data/model"),
    calibration: Annotated[Path, typer.Option(help="Calibration embedded in the file.")] = Path(
        "data/calibration/calibration.json"
    ),
) -> None:
    """Export a model folder to FP32 ONNX (spec and calibration in its metadata)."""
    import json

    from pipeline_lib.detect.checkpoint import load_model
    from pipeline_lib.detect.runtimes import export_onnx

    try:
        net, spec = load_model(model)
        cal = json.loads(calibration.read_text(encoding="utf-8")) if calibration.is_file() else None
        export_onnx(net, spec, out, cal)
    except SoundopsError as exc:
        _fail(exc)
    _out().print(f"wrote {out}")


@mine_app.command("accept")
def mine_accept(
    root: ROOT_OPT = Path(),
    min_score: Annotated[
        float, typer.Option(help="Accept mined clips scoring at least this.")
    ] = 0.0,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Mined clip id to leave out (repeatable).")
    ] = None,
    no_dvc: Annotated[bool, typer.Option("--no-dvc", help="Do not `dvc add` the folder.")] = False,
) -> None:
    """Copy mined clips into the hard-negative source and track it with DVC."""
    from pipeline_lib.base.layout import Layout
    from pipeline_lib.base.params import load_params
    from pipeline_lib.release.accept import accept

    layout = Layout(root.resolve())
    try:
        params = load_params(layout.params)
        done = accept(params, layout, min_score, frozenset(exclude or []), track=not no_dvc)
    except SoundopsError as exc:
        _fail(exc)
        return
    _out().print(
        f"accepted {done['accepted']} mined clip(s); the hard-negative folder holds "
        f"{done['clips']} clip(s). Next: git add the .dvc file, then `dvc repro`."
    )


def _flow_env(root: Path) -> None:
    """Before Prefect or MLflow import: Prefect's home in the project (not ~/.prefect), a
    generous temporary-server start-up on small machines, no telemetry, and this
    interpreter's bin folder on PATH for the ``dvc`` the tasks call."""
    from pipeline_lib.release.tracking import STATE_DIR, quiet_env

    os.environ.setdefault("PREFECT_HOME", str(root / STATE_DIR / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for noisy in ("httpx", "docket", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.update(quiet_env())
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _load(root: Path) -> tuple[Path, Params]:
    from pipeline_lib.base.params import load_params

    project = root.resolve()
    params = load_params(Layout(project).params)
    return project, params


def _where_to_look(project: Path, params: Params) -> list[str]:
    from pipeline_lib.release.tracking import redact_uri, tracking_uri

    uri = redact_uri(tracking_uri(project, params))
    shown = uri.replace(f"sqlite:///{project}/", "sqlite:///")
    return [
        f"MLflow UI: mlflow ui --backend-store-uri {shown}  (then http://127.0.0.1:5000)",
        "evaluation report: data/evaluate/report.html; export report: data/export/report.html",
        "release channels: soundops models list",
    ]


@app.command("run")
def run_flow(
    flow: Annotated[str, typer.Argument(help="build, retrain or monitor.")],
    root: ROOT_OPT = Path(),
    channel: Annotated[str, typer.Option(help="monitor: the channel to check.")] = "edge",
) -> None:
    """Run a Prefect flow now (a temporary Prefect server unless PREFECT_API_URL is set)."""
    from pipeline_lib.release.project_lock import project_lock

    if flow not in FLOWS:
        _fail(SoundopsError(f"flow '{flow}' does not exist; expected one of {', '.join(FLOWS)}."))
    try:
        project, params = _load(root)
        _flow_env(project)
        if flow == "monitor":
            from flows.monitor import monitor

            state = monitor(root=str(project), channel=channel, return_state=True)
        else:
            # the lock before Prefect starts: a second build fails before touching anything
            with project_lock(project, flow):
                if flow == "build":
                    from flows.build import build

                    state = build(root=str(project), return_state=True)
                else:
                    from flows.retrain import retrain

                    state = retrain(root=str(project), reason="run by hand", return_state=True)
        done = cast("State[Any]", state)  # a sync flow's state, not an awaitable
        if not done.is_completed():  # failed, crashed or cancelled
            raise SoundopsError(done.message or f"flow {flow} ended {done.type.value.lower()}")
        result = done.result()
    except SoundopsError as exc:
        _fail(exc)
        return
    _print_result(project, params, result)


def _print_result(project: Path, params: Params, result: dict[str, Any]) -> None:
    out = _out()
    stages = result.get("stages") or []
    if stages:
        ran = [s["stage"] for s in stages if not s["skipped"]]
        skipped = len(stages) - len(ran)
        out.print(f"stages: ran {', '.join(ran) or 'none'}; {skipped} up to date (skipped)")
    name = params.release.model_name
    if result["flow"] == "monitor":
        f = result["field"]
        out.print(
            f"monitor: {name} v{result['version']} on {f['hours']:.2f} h of new audio: "
            f"FAH {f['fah']:.2f} ({f['fah_lo']:.2f}-{f['fah_hi']:.2f}), recorded "
            f"{result['recorded_fah']:.2f}; {result['why']}"
        )
        sub = result.get("retrain")
        if isinstance(sub, dict):
            result = sub
        elif sub:
            out.print("retrain: triggered through the Prefect deployment")
    if result.get("flow") == "retrain" and not result.get("retrained"):
        out.print(f"retrain: nothing retrained ({result['why']})")
    if "version" in result and result.get("flow") != "monitor":
        from pipeline_lib.release import registry
        from pipeline_lib.release.tracking import configure

        configure(project, params)
        v = registry.get_version(params, str(result["version"]))
        f = v.figures
        status = "candidate" if "candidate" in v.aliases else v.tags.get("gates", "")

        def fig(key: str, spec: str) -> str:  # n/a: a figure the test split cannot measure
            return format(f[key], spec) if key in f else "n/a"

        out.print(
            f"registered {name} version {v.version} ({status}): FAH {fig('fah', '.2f')} "
            f"({fig('fah_lo', '.2f')}-{fig('fah_hi', '.2f')}) over "
            f"{fig('hours', '.2f')} h of background, recall {fig('recall', '.4f')}, "
            f"INT8 TFLite {int(f['tflite_bytes']):,} bytes",
            highlight=False,
        )
        if result.get("why"):
            out.print(f"challenger vs champion: {result['why']}")
    for line in _where_to_look(project, params):
        out.print(f"  {line}", highlight=False)


@app.command("serve")
def serve_cmd(
    root: ROOT_OPT = Path(),
    port: Annotated[int, typer.Option(help="Port for the local Prefect server.")] = 4200,
) -> None:
    """Serve build, monitor and retrain as Prefect deployments (cron schedules from
    release.schedules; retrain on the FAH-regression event). Starts Prefect's local server
    unless PREFECT_API_URL points at one. Stop with Ctrl-C."""
    try:
        project, params = _load(root)
        _flow_env(project)
        from flows.serve import serve_forever, start_local_server

        server = None if os.environ.get("PREFECT_API_URL") else start_local_server(project, port)
        try:
            serve_forever(project, params)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
    except SoundopsError as exc:
        _fail(exc)


def _registry_errors() -> tuple[type[Exception], ...]:
    """Errors a registry command reports in one sentence (an unreachable tracking server,
    a store MLflow refuses), besides our own."""
    from mlflow.exceptions import MlflowException

    return (SoundopsError, MlflowException)


def _registry(root: Path) -> tuple[Path, Params]:
    from pipeline_lib.release.tracking import configure

    project, params = _load(root)
    configure(project, params)  # with MLflow's telemetry off (tracking.quiet_env)
    return project, params


@models_app.command("list")
def models_list(root: ROOT_OPT = Path()) -> None:
    """Every registered version with its channels and headline figures."""
    from pipeline_lib.release import registry

    try:
        _, params = _registry(root)
        found = registry.versions(params)
    except _registry_errors() as exc:
        _fail(SoundopsError(str(exc)))
        return
    table = Table(title=params.release.model_name)
    for col in (
        "version",
        "aliases",
        "fah",
        "recall",
        "tflite_bytes",
        "arena_bytes",
        "data",
        "commit",
        "gates",
    ):
        table.add_column(col)
    for v in found:
        f = v.figures
        table.add_row(
            str(v.version),
            ", ".join(sorted(v.aliases)),
            f"{f.get('fah', float('nan')):.2f}",
            f"{f.get('recall', float('nan')):.4f}",
            f"{int(f.get('tflite_bytes', 0)):,}",
            f"{int(f.get('arena_bytes', 0)):,}",
            v.tags.get("data_version", "")[:8],
            v.tags.get("git_commit", "")[:8],
            v.tags.get("gates", ""),
        )
    _out().print(table)


@models_app.command("compare")
def models_compare(
    a: Annotated[str, typer.Argument(help="A version number or alias.")],
    b: Annotated[str, typer.Argument(help="A version number or alias.")],
    root: ROOT_OPT = Path(),
) -> None:
    """Two versions side by side: figures, sizes, data version, evaluation audio."""
    from pipeline_lib.release import registry

    try:
        _, params = _registry(root)
        va, vb = registry.get_version(params, a), registry.get_version(params, b)
    except _registry_errors() as exc:
        _fail(SoundopsError(str(exc)))
        return
    table = Table(title=f"{params.release.model_name}: v{va.version} vs v{vb.version}")
    table.add_column("")
    table.add_column(f"v{va.version} {','.join(va.aliases)}")
    table.add_column(f"v{vb.version} {','.join(vb.aliases)}")
    fa, fb = va.figures, vb.figures
    for key in sorted(set(fa) | set(fb)):
        table.add_row(key, f"{fa.get(key, float('nan')):g}", f"{fb.get(key, float('nan')):g}")
    for key in ("data_version", "eval_audio", "git_commit", "arch", "gates"):
        table.add_row(key, va.tags.get(key, ""), vb.tags.get(key, ""))
    _out().print(table)
    ok, why = registry.better(va, vb, params)
    _out().print(f"v{va.version} better than v{vb.version} by release.compare: {ok} ({why})")


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="A version number or alias (e.g. candidate).")],
    channel: Annotated[str, typer.Option(help="Release channel (an MLflow alias).")] = "edge",
    root: ROOT_OPT = Path(),
) -> None:
    """Move a channel to a version that passes release.gates and write its release bundle."""
    from pipeline_lib.release import registry

    try:
        project, params = _registry(root)
        v, bundle = registry.promote(params, version, channel, project)
    except _registry_errors() as exc:
        _fail(SoundopsError(str(exc)))
        return
    _out().print(
        f"{channel} → version {v.version}; release bundle in {bundle.relative_to(project)}"
    )


@models_app.command("rollback")
def models_rollback(
    channel: Annotated[str, typer.Option(help="Release channel.")] = "edge",
    root: ROOT_OPT = Path(),
) -> None:
    """Put a channel back on the version it held before its last promotion."""
    from pipeline_lib.release import registry

    try:
        project, params = _registry(root)
        v = registry.rollback(params, channel, project)
    except _registry_errors() as exc:
        _fail(SoundopsError(str(exc)))
        return
    _out().print(f"{channel} → version {v.version} (rolled back)")


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("serve-model")
def serve_model(
    root: ROOT_OPT = Path(),
    alias: Annotated[
        str | None, typer.Option(help="Alias or version served (default service.alias).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default service.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default service.port).")] = None,
    runtime: Annotated[
        str | None, typer.Option(help="onnx or tflite (default service.runtime).")
    ] = None,
    max_streams: Annotated[
        int | None, typer.Option(help="Open streams per process (default service.max_streams).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Server processes (default service.workers).")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="File holding the token required on /v1 (or set SOUNDOPS_SERVICE_TOKEN).",
        ),
    ] = None,
    token_arg: Annotated[str | None, typer.Option("--token", hidden=True)] = None,
) -> None:
    """Serve the registered model behind an alias (default `edge`): file detection,
    second-stage verification, live microphone streams and a browser view at /.
    Binds to localhost; any other address needs a token, from the environment variable
    SOUNDOPS_SERVICE_TOKEN or --token-file (never the command line, which `ps` shows to
    every user). Stop with Ctrl-C."""
    import pydantic

    from pipeline_lib.base.params import ServiceParams

    def service_token() -> str | None:
        """The token from --token-file or SOUNDOPS_SERVICE_TOKEN (empty is unset), with
        surrounding whitespace dropped; a blank one is refused, since it guards nothing."""
        env = os.environ.get("SOUNDOPS_SERVICE_TOKEN", "")
        if token_file is not None and env:
            raise SoundopsError(
                "give the service token once: SOUNDOPS_SERVICE_TOKEN or --token-file, not both."
            )
        if token_file is None:
            raw, where = env, "SOUNDOPS_SERVICE_TOKEN"
            if not env:
                return None
        else:
            where = f"--token-file {token_file}"
            try:
                raw = token_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise SoundopsError(f"{where}: cannot read it ({exc.strerror}).") from None
            except UnicodeDecodeError:
                raise SoundopsError(f"{where}: the file is not UTF-8 text.") from None
        if not raw.strip():
            raise SoundopsError(f"{where} holds only whitespace; set a real token.")
        return raw.strip()

    try:
        if token_arg is not None:  # refused, not ignored: someone meant to set a token
            raise SoundopsError(
                "--token would show the token to every user of this machine in `ps`; set "
                "SOUNDOPS_SERVICE_TOKEN or put it in a file given with --token-file."
            )
        token = service_token()
        project, params = _registry(root)
        overrides = {
            "alias": alias,
            "host": host,
            "port": port,
            "runtime": runtime,
            "max_streams": max_streams,
            "workers": workers,
        }
        try:
            service = ServiceParams.model_validate(
                params.service.model_dump() | {k: v for k, v in overrides.items() if v is not None}
            )
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            raise SoundopsError(f"--{first['loc'][0]}: {first['msg']}.") from None
        if not _loopback(service.host) and not token:
            raise SoundopsError(
                f"service.host {service.host} is reachable from other machines; set a token "
                "with SOUNDOPS_SERVICE_TOKEN or --token-file."
            )
        import uvicorn

        from pipeline_lib.serve.app import ENV_CONFIG, TimedH11Protocol
        from pipeline_lib.serve.models import Models

        models = Models(project, params, service)
        ref, model = models.get(None)  # an unknown alias fails here, not at the first request
    except _registry_errors() as exc:
        _fail(SoundopsError(str(exc)))
        return
    _out().print(
        f"serving {model.name} version {model.version} ('{ref}', {service.runtime}) on "
        f"http://{service.host}:{service.port}/  (API schema at /docs and /openapi.json)"
    )
    # each worker process builds its own app (models, streams) from the same settings
    os.environ[ENV_CONFIG] = json.dumps(
        {"root": str(project), "service": service.model_dump(), "token": token}
    )
    uvicorn.run(
        "pipeline_lib.serve.app:from_environment",
        factory=True,
        host=service.host,
        port=service.port,
        workers=service.workers,
        log_level="info",
        access_log=token is None,  # access lines would carry ?token=
        ws_max_size=int(service.max_frame_s * 2 * model.spec.rate * 2) + 1024,
        http=TimedH11Protocol,  # h11 with a deadline for request headers
        timeout_keep_alive=service.keep_alive_s,
        h11_max_incomplete_event_size=16 * 1024,  # request line and headers: 431 beyond
    )


def run() -> None:  # pragma: no cover - console entry for `python -m pipeline_lib.cli`
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    run()
