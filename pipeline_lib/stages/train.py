"""train stage: a zoo model on the feature store, with what a deployable detector needs.

AdamW with warm-up and cosine decay, label smoothing, a balanced sampler (each label
equally likely, so rare hard negatives are seen as often as common speech) or class
weights, SpecAugment, an EMA of the weights (validated and saved), gradient clipping,
early stopping on a validation figure that tracks deployment, optional distillation from
a teacher or from an ensemble of seeds trained first, AMP and channels-last on CUDA. A
checkpoint after every epoch lets a killed run resume where it stopped and finish with the
same weights as an unbroken run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from pipeline_lib.artifacts.store import Store
from pipeline_lib.base.atomic import atomic_path, write_csv, write_json
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import DistillParams, Params, TrainParams
from pipeline_lib.detect import decision
from pipeline_lib.detect.checkpoint import ModelSpec, load_model, logits, save_model
from pipeline_lib.detect.metrics import pauc
from pipeline_lib.detect.models import build, count_params_macs

log = logging.getLogger(__name__)

# Called after each epoch with its figures and the epoch number (1-based): how a caller
# (the CLI, with MLflow) follows training live without the stage importing a tracker.
EpochHook = Callable[[dict[str, float], int], None]


@dataclass
class History:
    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    rows: list[dict[str, float]] = field(default_factory=list)


def _boost_mask(index: pd.DataFrame, tp: TrainParams) -> np.ndarray:
    prefixes = tuple(f"{name}:" for name in tp.boost.sources)
    mask: np.ndarray = index["group"].astype(str).str.startswith(prefixes).to_numpy()
    return mask


def sampling_p(index: pd.DataFrame, tp: TrainParams) -> np.ndarray:
    """Probability of drawing each train row: each label equally likely (``balanced``) or
    uniform, and ``boost.share`` of the mass spread evenly over the boosted sources' rows."""
    labels = index["label"].to_numpy()
    if tp.sampler == "balanced":
        counts = pd.Series(labels).value_counts()
        p = 1.0 / counts[labels].to_numpy()
    else:
        p = np.ones(len(labels))
    boost = _boost_mask(index, tp)
    if tp.boost.share > 0 and boost.any():
        rest = p * ~boost
        if rest.sum() == 0:
            return np.full(len(p), 1.0 / len(p))
        share = tp.boost.share
        out: np.ndarray = (1 - share) * rest / rest.sum() + share * boost / boost.sum()
        return out
    result: np.ndarray = p / p.sum()
    return result


def mel_warp(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """VTLP (augment.freq_warp): output bin k of window i reads its mel bin k * alpha[i]
    (linearly interpolated, clamped at the top), a new speaker's vocal tract each epoch;
    the corpus's resampling fixes one per clip. ``x`` is windows x frames x bins."""
    b, t, f = x.shape
    src = (torch.arange(f, dtype=torch.float32)[None] * alpha[:, None]).clamp(0, f - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=f - 1)
    frac = (src - lo)[:, None]
    at_lo = torch.gather(x, 2, lo[:, None].expand(b, t, f))
    at_hi = torch.gather(x, 2, hi[:, None].expand(b, t, f))
    return at_lo * (1 - frac) + at_hi * frac


def band_limit(x: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """A narrow-band microphone (augment.band_limit_prob): mel bins at or above ``cut[i]`` of
    window i keep only their quietest frame, the floor that noise leaves when the voice
    above the microphone's band is gone. ``x`` is windows x frames x bins; ``cut`` in bins."""
    f = x.shape[2]
    above = torch.arange(f)[None, None] >= cut[:, None, None]
    return torch.where(above, x.amin(dim=1, keepdim=True), x)


def _fingerprint(params: Params, folder: Path) -> str:
    h = hashlib.sha256()
    h.update(params.model.model_dump_json().encode())
    h.update(params.train.model_dump_json().encode())
    h.update(params.augment.model_dump_json().encode())
    h.update(str(params.seed).encode())
    for name in ("train.csv", "val.csv", "norm.json"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()


def training_seed(params: Params) -> int:
    """Initial weights and batches: ``train.seed``, or the project's seed when it is null."""
    return params.seed if params.train.seed is None else params.train.seed


class Trainer:
    def __init__(
        self,
        params: Params,
        layout: Layout,
        state_dir: Path | None = None,
        teachers: list[nn.Module] | None = None,
    ) -> None:
        self.p = params
        self.tp = params.train
        self.layout = layout
        self.feat_dir = layout.features
        self.train = Store.open(self.feat_dir, "train")
        self.val = Store.open(self.feat_dir, "val")
        norm = json.loads((self.feat_dir / "norm.json").read_text())
        self.mean = torch.tensor(norm["mean"], dtype=torch.float32)
        self.std = torch.tensor(norm["std"], dtype=torch.float32)
        self.classes = params.task.classes
        _, self.frames, self.bins = self.train.x.shape
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # initial weights and batches; train.seed retrains on the same corpus
        self.seed = training_seed(params)
        torch.manual_seed(self.seed)
        if self.tp.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        try:  # a size that cannot build (a stride longer than the window, say) fails here
            self.model = build(
                params.model.arch, len(self.classes), self.frames, self.bins, **params.model.options
            )
            self.n_params, self.macs = count_params_macs(self.model, self.frames, self.bins)
        except (TypeError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SoundopsError(
                f"model.options: {params.model.arch} cannot be built with "
                f"{dict(params.model.options)} ({first.rstrip('.')})."
            ) from None
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        ema_fn = get_ema_multi_avg_fn(self.tp.ema_decay)  # type: ignore[no-untyped-call]
        self.ema = AveragedModel(self.model, multi_avg_fn=ema_fn, use_buffers=True)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=self.tp.lr, weight_decay=self.tp.weight_decay
        )
        self.steps_per_epoch = max(1, len(self.train.index) // self.tp.batch_size)
        total = self.tp.epochs * self.steps_per_epoch
        warm = max(1, int(self.tp.warmup_epochs * self.steps_per_epoch))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            lambda s: (
                min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
            ),
        )
        self.sample_p = sampling_p(self.train.index, self.tp)
        boost = _boost_mask(self.train.index, self.tp)
        self.boosted = self.tp.boost.share > 0 and bool(boost.any())
        cls = self.train.index["class"].to_numpy()
        freq = np.bincount(cls, minlength=len(self.classes)).astype(np.float64)
        self.class_w = torch.tensor(
            freq.sum() / np.maximum(freq, 1) / len(freq), dtype=torch.float32
        )
        self.teachers: list[nn.Module] = list(teachers or [])
        if self.tp.distill.teacher is not None:
            self.teachers.append(load_model(layout.root / self.tp.distill.teacher)[0])
        for teacher in self.teachers:
            teacher.to(self.device).eval()
            teacher.requires_grad_(False)
        self.state_dir = layout.train_state if state_dir is None else state_dir
        self.fingerprint = _fingerprint(params, self.feat_dir)
        self.history = History()

    # -- data ---------------------------------------------------------------------------
    def _epoch_rows(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 11, epoch])
        n = self.steps_per_epoch * self.tp.batch_size
        if self.tp.sampler == "balanced" or self.boosted:
            return rng.choice(len(self.sample_p), size=n, p=self.sample_p)
        return rng.permutation(len(self.sample_p))[:n]

    def _to_input(self, feats: np.ndarray, gen: torch.Generator | None = None) -> torch.Tensor:
        x = torch.from_numpy(feats)
        if gen is not None:
            x = self._band_limit(self._freq_warp(x, gen), gen)
        x = (x - self.mean) / self.std
        return x[:, None].to(self.device)

    def _freq_warp(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        w = self.p.augment.freq_warp
        if w <= 0:
            return x
        return mel_warp(x, 1 + (torch.rand(x.shape[0], generator=gen) * 2 - 1) * w)

    def _band_limit(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        prob = self.p.augment.band_limit_prob
        if prob <= 0:
            return x
        f = x.shape[2]
        # the band ends between 40% and 90% of the mel axis (about 1.3 to 6 kHz)
        cut = (f * (0.4 + 0.5 * torch.rand(x.shape[0], generator=gen))).long()
        keep = torch.rand(x.shape[0], generator=gen) >= prob
        return band_limit(x, torch.where(keep, torch.full_like(cut, f), cut))

    def _spec_augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        a = self.p.augment
        b, _, t, f = x.shape
        mask = torch.ones(b, 1, t, f)
        for count, width, axis, size in (
            (a.time_masks, a.time_mask_frames, 2, t),
            (a.freq_masks, a.freq_mask_bins, 3, f),
        ):
            for _ in range(count):
                w = torch.randint(0, width + 1, (b,), generator=gen)
                s = (torch.rand(b, generator=gen) * (size - w).clamp(min=1)).long()
                pos = torch.arange(size)
                hit = (pos[None] >= s[:, None]) & (pos[None] < (s + w)[:, None])
                shape = (b, 1, size, 1) if axis == 2 else (b, 1, 1, size)
                mask = mask * (~hit).float().reshape(shape)
        return x * mask.to(x.device)

    # -- one epoch ------------------------------------------------------------------------
    def _loss(self, out: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        weight = self.class_w.to(self.device) if self.tp.sampler == "class_weights" else None
        loss = F.cross_entropy(out, y, weight=weight, label_smoothing=self.tp.label_smoothing)
        if self.teachers:
            with torch.no_grad():  # an ensemble's mean logits
                t_out = torch.stack([t(x).float() for t in self.teachers]).mean(0)
            tau, alpha = self.tp.distill.temperature, self.tp.distill.alpha
            kd = (
                F.kl_div(
                    F.log_softmax(out / tau, 1), F.softmax(t_out / tau, 1), reduction="batchmean"
                )
                * tau
                * tau
            )
            loss = (1 - alpha) * loss + alpha * kd
        return loss

    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        rows = self._epoch_rows(epoch)
        gen = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        ys = self.train.index["class"].to_numpy()
        total, n = 0.0, 0
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"epoch {epoch + 1}/{self.tp.epochs}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
        )
        for i in bar:
            idx = rows[i * self.tp.batch_size : (i + 1) * self.tp.batch_size]
            x = self._spec_augment(self._to_input(self.train.batch(idx), gen), gen)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(ys[idx]).long().to(self.device)
            with torch.autocast(
                self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
            ):
                loss = self._loss(self.model(x).float(), y, x)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(self.model.parameters(), self.tp.grad_clip)
            self.opt.step()
            self.sched.step()
            self.ema.update_parameters(self.model)
            total += float(loss.detach()) * len(idx)
            n += len(idx)
            bar.set_postfix(loss=f"{total / n:.4f}")
        return total / max(n, 1)

    def eval_model(self) -> nn.Module:
        module: nn.Module = self.ema.module
        return module

    def best_model(self) -> nn.Module:
        """The EMA weights of the best epoch, on the CPU (what the stage saves)."""
        model = self.eval_model().cpu()
        model.load_state_dict(load_file(str(self.state_dir / "best.safetensors")))
        return model

    def spec(self) -> ModelSpec:
        return ModelSpec(
            arch=self.p.model.arch,
            classes={k: list(v) for k, v in self.classes.items()},
            frames=self.frames,
            bins=self.bins,
            rate=self.p.audio.sample_rate,
            features=self.p.features.model_dump(mode="json"),
            norm_mean=self.mean.tolist(),
            norm_std=self.std.tolist(),
            params=self.n_params,
            macs=self.macs,
            options=dict(self.p.model.options),
        )

    def validate(self) -> dict[str, float]:
        model = self.eval_model().cpu().eval()
        spec = self.spec()
        val_logits = logits(model, np.asarray(self.val.x, np.float32), spec)
        y = self.val.index["class"].to_numpy()
        scores = decision.event_probability(val_logits)
        out = {
            "val_loss": float(
                F.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(y)).item()
            ),
            "val_accuracy": float((val_logits.argmax(1) == y).mean()),
            "val_pauc": pauc(scores, y != 0, self.tp.pauc_max_fpr),
        }
        if self.tp.early_stop == "val_recall_at_fah":
            out["val_recall_at_fah"] = self._recall_at_fah(model, spec, scores, y)
        self.eval_model().to(self.device)
        return out

    def _recall_at_fah(
        self, model: nn.Module, spec: ModelSpec, clip_scores: np.ndarray, y: np.ndarray
    ) -> float:
        """Recall of val event clips at the threshold that keeps val background streams at
        the calibrate preset's false alarms per hour (no smoothing)."""
        cal = self.p.calibrate
        streams = pd.read_csv(self.feat_dir / "streams.csv", keep_default_na=False)
        val = streams[streams["split"] == "val"]
        hop = max(1, round(cal.hop_s / decision.STEP_S))
        sm, ts = [], []
        for sid in val["id"]:
            feats = np.load(self.feat_dir / "streams" / f"{sid}.npy", allow_pickle=False)
            lg, t = decision.window_logits(model, spec, feats.astype(np.float32), hop)
            sm.append(decision.event_probability(lg))
            ts.append(t)
        hours = float(val["duration_s"].sum()) / 3600
        thr = decision.threshold_for_fah(sm, ts, hours, cal.target_fah, cal.refractory_s)
        return float((clip_scores[y != 0] >= thr).mean()) if (y != 0).any() else float("nan")

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, improved: bool) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.model.state_dict().items():
            tensors[f"model.{k}"] = v.detach().cpu().contiguous()
        for k, v in self.ema.state_dict().items():
            tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
        opt_state = self.opt.state_dict()
        for pid, st in opt_state["state"].items():
            for k, v in st.items():
                tensors[f"opt.{pid}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {
            "fingerprint": self.fingerprint,
            "history": self.history.__dict__,
            "sched": self.sched.state_dict(),
            "param_groups": opt_state["param_groups"],
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.state_dir / "last.safetensors") as tmp:
            save_file(tensors, str(tmp))
        if improved:
            ema_only = {
                k.removeprefix("ema.module."): v
                for k, v in tensors.items()
                if k.startswith("ema.module.")
            }
            with atomic_path(self.state_dir / "best.safetensors") as tmp:
                save_file(ema_only, str(tmp))
        write_json(self.state_dir / "last.json", meta)  # written last: marks a whole checkpoint

    def try_resume(self) -> bool:
        meta_path = self.state_dir / "last.json"
        weights = self.state_dir / "last.safetensors"
        if not (meta_path.is_file() and weights.is_file()):
            return False
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != self.fingerprint:
            log.info("train: checkpoint is for other params or data; starting afresh")
            return False
        t = load_file(str(weights))
        self.model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        self.ema.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
        opt_state: dict[str, Any] = {"param_groups": meta["param_groups"], "state": {}}
        for k, v in t.items():
            if k.startswith("opt."):
                _, pid, name = k.split(".", 2)
                opt_state["state"].setdefault(int(pid), {})[name] = v
        self.opt.load_state_dict(opt_state)
        self.sched.load_state_dict(meta["sched"])
        torch.set_rng_state(t["rng.torch"])
        self.history = History(**meta["history"])
        log.info(
            "train: resuming after epoch %d (best %.4f at epoch %d)",
            self.history.epoch,
            self.history.best,
            self.history.best_epoch + 1,
        )
        return True

    # -- the loop -------------------------------------------------------------------------
    def fit(self, on_epoch: EpochHook | None = None) -> History:
        """Train to the end or early stop; ``on_epoch(row, epoch)`` sees each epoch's figures."""
        self.try_resume()
        key = None if self.tp.early_stop == "val_loss" else self.tp.early_stop
        while self.history.epoch < self.tp.epochs and self.history.bad_epochs < self.tp.patience:
            epoch = self.history.epoch
            loss = self.train_epoch(epoch)
            figures = self.validate()
            row: dict[str, float] = {
                "epoch": float(epoch + 1),
                "train_loss": loss,
                "lr": float(self.sched.get_last_lr()[0]),
                **figures,
            }
            # val_loss: the smoothest figure on a few hundred val clips (pAUC over a few
            # dozen positives jumps to a lucky 1.0 and stops training early). Ties on the
            # other figures (a saturated pAUC of 1.0, say) go to the lower val loss.
            vl = figures["val_loss"]
            value = -vl if key is None else figures[key] - 1e-3 * vl
            improved = value > self.history.best + 1e-7
            if improved:
                self.history.best, self.history.best_epoch = value, epoch
                self.history.bad_epochs = 0
            else:
                self.history.bad_epochs += 1
            self.history.rows.append(row)
            self.history.epoch = epoch + 1
            self.save_checkpoint(improved)
            if on_epoch is not None:
                on_epoch(row, epoch + 1)
            log.info(
                "epoch %d: loss %.4f, val pAUC %.4f, val acc %.4f%s",
                epoch + 1,
                loss,
                figures["val_pauc"],
                figures["val_accuracy"],
                " (best)" if improved else "",
            )
        return self.history


def plot_curves(rows: list[dict[str, float]], path: Path) -> None:
    """Training curves as a PNG a person can look at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(frame["epoch"], frame["train_loss"], label="train loss")
    axes[0].plot(frame["epoch"], frame["val_loss"], label="val loss")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    for col in ("val_pauc", "val_accuracy", "val_recall_at_fah"):
        if col in frame:
            axes[1].plot(frame["epoch"], frame[col], label=col)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylim(0, 1.02)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def teacher_params(params: Params, seed: int) -> Params:
    """The params of one ensemble teacher: the student's recipe with another seed and no
    distillation of its own. The distillation keys are fixed, not the student's, so that a
    new temperature or weight retrains the student alone (they are in the fingerprint)."""
    distill = DistillParams(teacher=None, ensemble=0, alpha=0.0, temperature=1.0)
    train = params.train.model_copy(update={"seed": seed, "distill": distill})
    return params.model_copy(update={"train": train})


def _prefixed(on_epoch: EpochHook | None, prefix: str) -> EpochHook | None:
    """A teacher's epochs reach the caller's hook under their own metric names."""
    if on_epoch is None:
        return None
    hook = on_epoch

    def prefixed(row: dict[str, float], epoch: int) -> None:
        hook({prefix + k: v for k, v in row.items()}, epoch)

    return prefixed


def train_teachers(
    params: Params, layout: Layout, on_epoch: EpochHook | None = None
) -> list[nn.Module]:
    """Train ``train.distill.ensemble`` teachers, seeds seed..seed+n-1, each resumable in its
    own checkpoint folder (one per seed: a student of the next seed reuses the overlap)."""
    n = params.train.distill.ensemble
    first = training_seed(params)
    teachers: list[nn.Module] = []
    for i in range(n):
        seed = first + i
        log.info("train: teacher %d of %d (seed %d)", i + 1, n, seed)
        trainer = Trainer(
            teacher_params(params, seed), layout, state_dir=layout.train_state / f"teacher-{seed}"
        )
        history = trainer.fit(_prefixed(on_epoch, f"teacher{i + 1}_"))
        model = trainer.best_model()
        log.info(
            "train: teacher %d: best epoch %d, val loss %.4f",
            i + 1,
            history.best_epoch + 1,
            history.rows[history.best_epoch]["val_loss"],
        )
        teachers.append(model)
    return teachers


def run_train(
    params: Params, layout: Layout, on_epoch: EpochHook | None = None
) -> dict[str, float]:
    """The train stage: ``data/model`` (EMA weights of the best epoch + spec + curves)."""
    trainer = Trainer(params, layout, teachers=train_teachers(params, layout, on_epoch))
    log.info(
        "train: %s, %d parameters, %.2f M MACs per inference, %d train rows, device %s",
        params.model.arch,
        trainer.n_params,
        trainer.macs / 1e6,
        len(trainer.train.index),
        trainer.device,
    )
    history = trainer.fit(on_epoch)
    model = trainer.best_model()
    curves = layout.metrics / "train_curves.csv"
    frame = pd.DataFrame(history.rows)
    # one column order whether the run was resumed or not (a resumed history is read back
    # from its checkpoint with its keys sorted)
    first = ["epoch", "train_loss", "lr", "val_loss", "val_accuracy", "val_pauc"]
    rest = sorted(str(c) for c in frame if c not in first)
    frame = frame[[c for c in first if c in frame] + rest]
    write_csv(curves, frame)
    with atomic_path(layout.metrics / "train_curves.png") as png:
        plot_curves(history.rows, png.with_suffix(".png"))
        png.with_suffix(".png").rename(png)
    save_model(
        layout.model,
        model,
        trainer.spec(),
        extra={"curves.png": layout.metrics / "train_curves.png"},
    )
    best_row = history.rows[history.best_epoch]
    summary = {
        "best_epoch": history.best_epoch + 1,
        "epochs_run": history.epoch,
        "param_count": trainer.n_params,
        "macs": trainer.macs,
        "teachers": len(trainer.teachers),
        **{k: round(float(v), 5) for k, v in best_row.items() if k.startswith("val_")},
    }
    write_json(layout.metrics / "train.json", summary)
    log.info("train: best epoch %d, %s", history.best_epoch + 1, summary)
    return summary
