"""The MLflow model registry as release channels.

Each build registers the exported model as a new version of ``release.model_name``: the
INT8 ONNX model is the logged model, every export file rides along as run artifacts, and
the version's tags carry its figures (FAH, recall, sizes, parity), its data version (DVC
hashes), its evaluation audio and its git commit. Channels are aliases: ``candidate`` is
set by builds whose figures pass ``release.gates``; ``edge`` (or any channel) only by
:func:`promote`, which re-checks the gates, writes a release bundle, and keeps the channel's
history so :func:`rollback` can restore the previous version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_lib.artifacts.documents import ESPHOME_DIR, EvaluateDoc, ExportDoc, load_doc
from pipeline_lib.artifacts.parity_gates import parity_gate_failures
from pipeline_lib.base.atomic import sha256, write_json, write_text
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import Params, ReleaseGates
from pipeline_lib.release.tracking import STATE_DIR, data_version, eval_audio_hash, git_commit

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
EXPORT_FILES = (
    "model_int8.tflite",
    "model_int8.onnx",
    "model_fp32.onnx",
    "model_data.cc",
    "model_data.h",
    "device_manifest.json",
    "model_card.md",
    "report.html",
)
# files a version carries when its build made them: the server-side verifier
OPTIONAL_FILES = ("verifier.npz", "verifier.json")
BUNDLE_FILES = (
    "model_int8.tflite",
    "model_int8.onnx",
    "model_data.cc",
    "model_data.h",
    "device_manifest.json",
    "model_card.md",
)


# An MLflow alias and a folder name under releases/: no separators, dots or brackets, and
# not ``latest`` or ``vN``, which MLflow reserves.
_CHANNEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
DIGEST_TAG = "sha256."  # + export file name: the digest recorded when the version was made


def check_channel(channel: str) -> str:
    """The channel name, or one sentence saying why it cannot name a channel; checked
    before anything is written, so ``--channel ../x`` touches no folder."""
    if not _CHANNEL.fullmatch(channel) or channel == "latest" or re.fullmatch(r"v\d+", channel):
        raise SoundopsError(
            f"--channel: {channel!r} is not a channel name (lower-case letters, digits, '_' "
            "and '-', starting with a letter; not 'latest' or a version like 'v3')."
        )
    if channel.endswith("-previous"):
        raise SoundopsError(f"--channel: {channel!r}: '-previous' aliases are kept by soundops.")
    return channel


def file_digests(export: Path) -> dict[str, str]:
    """Version tags holding each export file's sha256: what downloads and bundles are
    checked against, so a changed byte in a cache or an artifact store is caught."""
    return {f"{DIGEST_TAG}{f}": sha256(export / f) for f in _present(export)}


def _present(export: Path) -> tuple[str, ...]:
    esphome = export / ESPHOME_DIR
    pair = sorted(f"{ESPHOME_DIR}/{p.name}" for p in esphome.glob("*")) if esphome.is_dir() else []
    return EXPORT_FILES + tuple(f for f in OPTIONAL_FILES if (export / f).is_file()) + tuple(pair)


def _esphome_files(version: Version) -> tuple[str, ...]:
    """The ESPHome pair a version carries (``esphome/NAME.json`` and ``.tflite``), from the
    digests recorded when it was registered."""
    names = (k.removeprefix(DIGEST_TAG) for k in version.tags if k.startswith(DIGEST_TAG))
    return tuple(sorted(n for n in names if n.startswith(f"{ESPHOME_DIR}/")))


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def _mlflow_error() -> type[Exception]:
    from mlflow.exceptions import MlflowException

    return MlflowException


def figures(root: Path, params: Params) -> dict[str, float]:
    """The numbers a version is judged and compared on, from the evaluate and export
    metrics of the build that produced it, under the names those documents give them."""
    ev = load_doc(root / "metrics" / "evaluate.json", EvaluateDoc, "evaluate")
    ex = load_doc(root / "metrics" / "export.json", ExportDoc, "export")
    op = ev.operating_point
    out: dict[str, float | None] = {
        "fah": op.fah,
        "fah_lo": op.fah_lo,
        "fah_hi": op.fah_hi,
        "recall": op.recall,
        "threshold": op.threshold,
        "hours": op.hours,
        "clip_roc_auc": ev.clips.get("roc_auc"),
        "tflite_bytes": ex.tflite_bytes,
        "onnx_int8_bytes": ex.onnx_int8_bytes,
        "arena_bytes": ex.arena_bytes,
        "param_count": ex.param_count,
        "macs": ex.macs,
        "fits_targets": float(all(t.fits for t in ex.targets.values())),
        # the export gates re-checked on the recorded parity figures with today's params
        "int8_parity": float(
            not parity_gate_failures(params, ex.parity.runtimes, ex.parity.tflm_vs_onnx)
        ),
        "tflm_onnx_mean_steps": ex.parity.tflm_vs_onnx.mean_steps,
    }
    real = [ev.extra[k] for k in ev.headline.real_target_sets]
    if real:  # the weakest real set: a gate on it holds for all of them
        out["real_recall"] = min(float(v["recall"]) for v in real)
    out["synthetic_positive_share"] = ev.headline.synthetic_positives / max(
        1, ev.headline.test_positives
    )
    for key, at_recall in ev.fah_at_recall.items():
        out[f"fah_at_recall_{key}"] = at_recall.fah
    for key, at_fah in ev.frr_at_fah.items():
        out[f"frr_at_fah_{key}"] = at_fah.frr
    # a figure a tiny split cannot measure is null in the metrics: left out, so a gate on
    # it fails (nothing certifies it) instead of comparing None
    return {k: float(v) for k, v in out.items() if v is not None and v == v}


def gate_failures(figs: dict[str, float], gates: ReleaseGates) -> list[str]:
    """Every gate the figures fail, as phrases naming the figure, its value and the gate."""
    failed = []
    if figs.get("fah", float("inf")) > gates.max_fah:
        failed.append(f"FAH {figs.get('fah')} > release.gates.max_fah {gates.max_fah}")
    if figs.get("recall", 0.0) < gates.min_recall:
        failed.append(f"recall {figs.get('recall')} < release.gates.min_recall {gates.min_recall}")
    if gates.int8_parity and figs.get("int8_parity", 0.0) < 1.0:
        failed.append("INT8 parity not passed (release.gates.int8_parity)")
    if gates.fits_targets and figs.get("fits_targets", 0.0) < 1.0:
        failed.append("does not fit every export.targets MCU (release.gates.fits_targets)")
    if gates.min_real_recall is not None:
        if "real_recall" not in figs:
            failed.append(
                "no real target recordings were evaluated (release.gates.min_real_recall "
                "needs an evaluate.extra clips set of them)"
            )
        elif figs["real_recall"] < gates.min_real_recall:
            failed.append(
                f"recall on real recordings {figs['real_recall']} < "
                f"release.gates.min_real_recall {gates.min_real_recall}"
            )
    return failed


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    run_id: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    created_ms: int

    @property
    def figures(self) -> dict[str, float]:
        out = {}
        for key, value in self.tags.items():
            if key.startswith("fig."):
                try:
                    out[key[4:]] = float(value)
                except ValueError:
                    continue
        return out


def _version(mv: Any) -> Version:
    return Version(
        name=mv.name,
        version=int(mv.version),
        run_id=mv.run_id or "",
        aliases=tuple(getattr(mv, "aliases", []) or []),
        tags=dict(mv.tags or {}),
        created_ms=int(mv.creation_timestamp or 0),
    )


def register(
    root: Path, params: Params, run_id: str, set_candidate: bool = True
) -> tuple[Version, list[str]]:
    """Log the exported model to ``run_id`` and register it as a new version; set
    ``candidate`` when the gates pass (and ``set_candidate``: the retrain flow decides
    itself). Returns the version and the failed gates."""
    import mlflow
    import mlflow.onnx
    import onnx

    export = root / "data" / "export"
    missing = [f for f in EXPORT_FILES if not (export / f).is_file()]
    if missing:
        raise SoundopsError(f"{export / missing[0]}: not found; run the export stage first.")
    name = params.release.model_name
    figs = figures(root, params)
    failed = gate_failures(figs, params.release.gates)
    dv = data_version(root)
    same = [v for v in versions_or_none(params) if v.tags.get("data_version") == dv["data_version"]]
    if same:  # nothing was rebuilt: the version of these very files already exists
        log.info(
            "%s version %d already holds these outputs; nothing new to register",
            name,
            same[-1].version,
        )
        return same[-1], failed
    digests = file_digests(export)
    tags = (
        digests
        | {f"fig.{k}": str(v) for k, v in figs.items()}
        | {
            "data_version": dv["data_version"],
            "eval_audio": eval_audio_hash(root),
            "git_commit": git_commit(root),
            "gates": "passed" if not failed else "; ".join(failed),
            "arch": params.model.arch,
        }
    )
    active = mlflow.active_run()
    if active is not None and active.info.run_id != run_id:
        raise SoundopsError(
            f"MLflow run {active.info.run_id} is active; register into it or end it first."
        )
    with mlflow.start_run(run_id=run_id) if active is None else contextlib.nullcontext():
        info = mlflow.onnx.log_model(
            onnx.load(str(export / "model_int8.onnx")),
            name="model",
            pip_requirements=["onnxruntime", "numpy"],
        )
        for file in _present(export):
            folder = "/".join(["export", *file.split("/")[:-1]])
            mlflow.log_artifact(str(export / file), folder)
        mlflow.log_dict(dv, "data_version.json")
        mlflow.log_metrics({f"release.{k}": v for k, v in figs.items()})
    client = _client()
    try:
        client.get_registered_model(name)
    except _mlflow_error():  # the first build of this model
        client.create_registered_model(name, description="soundops detector, INT8 for MCUs")
    mv = client.create_model_version(name, info.model_uri, run_id=run_id, tags=tags)
    if set_candidate and not failed:
        client.set_registered_model_alias(name, CANDIDATE, mv.version)
    log.info(
        "registered %s version %s (%s)",
        name,
        mv.version,
        "gates failed: " + "; ".join(failed) if failed else "gates passed",
    )
    return get_version(params, str(mv.version)), failed


def set_candidate(params: Params, version: int) -> None:
    _client().set_registered_model_alias(params.release.model_name, CANDIDATE, str(version))


def versions_or_none(params: Params) -> list[Version]:
    try:
        return versions(params)
    except _mlflow_error():  # no such registered model yet
        return []


def versions(params: Params) -> list[Version]:
    client = _client()
    name = params.release.model_name
    found = client.search_model_versions(f"name='{name}'")
    out = [_version(client.get_model_version(name, mv.version)) for mv in found]
    return sorted(out, key=lambda v: v.version)


def get_version(params: Params, ref: str) -> Version:
    """A version by number (``3``, ``v3``) or alias (``edge``, ``@edge``), or one sentence
    naming what exists."""
    client = _client()
    name = params.release.model_name
    ref = ref.strip()
    number = ref[1:] if ref[:1] in "vV" and ref[1:].isdigit() else ref
    try:
        if number.isdigit():
            return _version(client.get_model_version(name, number))
        return _version(client.get_model_version_by_alias(name, ref.lstrip("@")))
    except _mlflow_error():  # unknown model, version or alias: say what exists
        pass
    known = versions_or_none(params)
    if not known:
        raise SoundopsError(
            f"release.model_name '{name}': no registered versions yet; run `soundops run build`."
        ) from None
    listed = ", ".join(str(v.version) for v in known)
    aliases = sorted({a for v in known for a in v.aliases})
    raise SoundopsError(
        f"model '{name}': no version or alias '{ref}' (versions {listed}; "
        f"aliases {', '.join(aliases) or 'none'})."
    ) from None


def download(
    params: Params, version: Version, root: Path, need: tuple[str, ...] = EXPORT_FILES
) -> Path:
    """The version's export files, cached under ``.soundops/models/NAME/VERSION``
    (downloaded again unless every file in ``need`` is there)."""
    import mlflow.artifacts

    dest = root / STATE_DIR / "models" / version.name / str(version.version)
    if all((dest / f).is_file() for f in need):
        bad = _digest_mismatch(version, dest, need)
        if not bad:
            return dest
        log.warning("%s: differs from the registry's digest; downloading it again", dest / bad)
        shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a staging folder of this process's own: service workers may fetch the same version
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path="export", dst_path=str(staging)
        )
        if all((dest / f).is_file() for f in need):  # another process finished first
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        try:
            (staging / "export").rename(dest)
        except OSError:
            if not all((dest / f).is_file() for f in need):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    bad = _digest_mismatch(version, dest, need)
    if bad:
        shutil.rmtree(dest, ignore_errors=True)
        raise SoundopsError(
            f"model '{version.name}' version {version.version}: {bad} does not match the "
            "sha256 recorded in the registry; the artifact store holds a changed file."
        )
    return dest


def _digest_mismatch(version: Version, folder: Path, files: tuple[str, ...]) -> str | None:
    """The first file whose sha256 differs from the one the version recorded (versions
    registered before digests were recorded have none to compare)."""
    for name in files:
        want = version.tags.get(f"{DIGEST_TAG}{name}")
        if want is not None and sha256(folder / name) != want:
            return name
    return None


def _history_key(channel: str) -> str:
    return f"channel.{channel}.history"


def _history(params: Params, channel: str) -> list[int]:
    try:
        model = _client().get_registered_model(params.release.model_name)
    except _mlflow_error():
        raise SoundopsError(
            f"release.model_name '{params.release.model_name}': no registered versions yet; "
            "run `soundops run build`."
        ) from None
    raw = (model.tags or {}).get(_history_key(channel), "[]")
    return [int(v) for v in json.loads(raw)]


def write_bundle(params: Params, version: Version, root: Path, channel: str) -> Path:
    """``releases/CHANNEL/vN/``: the INT8 files, device manifest, model card, SHA256SUMS
    and release.json; written to a staging folder and renamed into place."""
    check_channel(channel)
    shipped = BUNDLE_FILES + _esphome_files(version)
    files = download(params, version, root, EXPORT_FILES + _esphome_files(version))
    dest = root / "releases" / channel / f"v{version.version}"
    staging = dest.with_name(f".{dest.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in shipped:
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files / name, staging / name)
    bad = _digest_mismatch(version, staging, shipped)  # the copy, as it will ship
    if bad:
        shutil.rmtree(staging, ignore_errors=True)
        raise SoundopsError(f"releases/{channel}: {bad} changed while the bundle was written.")
    sums = "".join(f"{sha256(staging / n)}  {n}\n" for n in shipped)
    write_text(staging / "SHA256SUMS", sums)
    write_json(
        staging / "release.json",
        {
            "model": version.name,
            "version": version.version,
            "channel": channel,
            "git_commit": version.tags.get("git_commit"),
            "data_version": version.tags.get("data_version"),
            "figures": version.figures,
        },
    )
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    write_text(root / "releases" / channel / "CURRENT", f"v{version.version}\n")
    return dest


def promote(params: Params, ref: str, channel: str, root: Path) -> tuple[Version, Path]:
    """Move ``channel`` to the version if it passes every gate (one error naming each
    failed gate otherwise); the previous holder stays in the channel's history."""
    if channel == CANDIDATE:
        raise SoundopsError("--channel: 'candidate' is set by builds, not by promotion.")
    check_channel(channel)
    version = get_version(params, ref)
    failed = gate_failures(version.figures, params.release.gates)
    if failed:
        raise SoundopsError(
            f"version {version.version} cannot go to '{channel}': " + "; ".join(failed) + "."
        )
    history = _history(params, channel)
    if history and history[-1] == version.version:
        raise SoundopsError(f"version {version.version} is already on '{channel}'.")
    bundle = write_bundle(params, version, root, channel)
    client = _client()
    name = params.release.model_name
    history.append(version.version)
    client.set_registered_model_tag(name, _history_key(channel), json.dumps(history))
    client.set_registered_model_alias(name, channel, str(version.version))
    if len(history) > 1:
        client.set_registered_model_alias(name, f"{channel}-previous", str(history[-2]))
    log.info("promoted %s version %d to %s", name, version.version, channel)
    return get_version(params, str(version.version)), bundle


def rollback(params: Params, channel: str, root: Path) -> Version:
    """Put the channel back on the version it held before the last promotion."""
    check_channel(channel)
    history = _history(params, channel)
    if len(history) < 2:
        raise SoundopsError(
            f"channel '{channel}': no earlier version to roll back to "
            f"(history: {', '.join(map(str, history)) or 'empty'})."
        )
    client = _client()
    name = params.release.model_name
    history.pop()
    previous = get_version(params, str(history[-1]))
    write_bundle(params, previous, root, channel)  # files first: a failed download moves nothing
    client.set_registered_model_alias(name, channel, str(previous.version))
    client.set_registered_model_tag(name, _history_key(channel), json.dumps(history))
    if len(history) > 1:
        client.set_registered_model_alias(name, f"{channel}-previous", str(history[-2]))
    else:
        client.delete_registered_model_alias(name, f"{channel}-previous")
    log.info("rolled %s back to version %d", channel, previous.version)
    return get_version(params, str(previous.version))


def better(challenger: Version, champion: Version, params: Params) -> tuple[bool, str]:
    """Is the challenger better on the figure ``release.compare`` names, measured on the
    same evaluation audio? Returns the verdict and a sentence saying why."""
    cmp = params.release.compare
    if challenger.tags.get("eval_audio") != champion.tags.get("eval_audio"):
        return False, (
            "not comparable: the two versions were evaluated on different audio "
            f"({challenger.tags.get('eval_audio')} vs {champion.tags.get('eval_audio')})"
        )
    # both figures are lower-is-better; a figure the test audio cannot measure (recall
    # never reached, too little background) is missing and loses
    if cmp.by == "fah_at_recall":
        key, what, digits = f"fah_at_recall_{cmp.recall}", f"FAH at recall {cmp.recall}", 2
    else:
        key, what, digits = f"frr_at_fah_{cmp.fah}", f"FRR at FAH {cmp.fah}", 4
    a, b = challenger.figures.get(key), champion.figures.get(key)
    if a is None:
        return False, f"the challenger's {what} was not measured on the test audio"
    if b is None:
        return True, f"{what}: {a:.{digits}f}; the champion's was not measured"
    return a < b, f"{what}: {a:.{digits}f} vs champion {b:.{digits}f} (lower wins)"
