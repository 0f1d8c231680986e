"""evaluate stage: what the calibrated model does on audio it never trained on.

Three kinds of evidence, all through the one streaming detector with the calibration's
operating point: test clips (ROC-AUC, EER, pAUC, confusion), long background recordings
(false alarms per hour counted as events over their real duration, with 95% Poisson
intervals, per source), and test positives inserted into test background at known times
(event recall, latency). User test sets in ``evaluate.extra`` are measured the same way.
Writes DVC metrics and plots and a self-contained HTML report with the worst false alarms
and misses as playable audio.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm.auto import tqdm

from pipeline_lib.artifacts.documents import EvaluateDoc, write_doc
from pipeline_lib.artifacts.manifests import load_split_manifest
from pipeline_lib.audio.io import read_audio, resample
from pipeline_lib.audio.sources.base import audio_files
from pipeline_lib.base import html_page
from pipeline_lib.base.atomic import atomic_path, write_csv
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import ExtraSet, Params
from pipeline_lib.base.paths import project_path
from pipeline_lib.detect import decision, metrics
from pipeline_lib.detect.calibration import reliability, softmax
from pipeline_lib.detect.positives import clip_labels, clip_scores, positive_stream
from pipeline_lib.detect.runtimes import Scorer, TorchScorer
from pipeline_lib.detect.streaming import Calibration, Scored, StreamingDetector, score_file

log = logging.getLogger(__name__)


@dataclass
class Recording:
    """One scored background recording (never holds the target)."""

    name: str
    source: str
    path: Path
    duration_s: float
    scored: Scored


def _score_recordings(
    rows: list[tuple[str, str, Path]], scorer: Scorer, cal: Calibration, desc: str
) -> list[Recording]:
    out = []
    for name, source, path in tqdm(rows, desc=desc, unit="file"):
        fs = score_file(path, scorer, cal)
        out.append(Recording(name, source, path, fs.duration_s, fs.scored))
    return out


def sweep(
    background: list[Recording],
    pos: Scored,
    spans: list[tuple[float, float]],
    refractory_s: float,
    window_s: float,
    tol: float,
    points: int = 300,
) -> pd.DataFrame:
    """FAH on background and recall on the positive stream at many thresholds (the DET
    curve), with the calibrated smoothing."""
    hours = sum(r.duration_s for r in background) / 3600
    sm = [r.scored.smoothed for r in background]
    ts = [r.scored.times for r in background]
    alarms = np.concatenate(sm)
    grid = decision.threshold_grid(
        np.concatenate([alarms, pos.smoothed]),
        np.linspace(0.0, 1.0, points),
        np.linspace(0.02, 0.999, 50),
        alarms,
    )
    rows = []
    for thr in grid:
        n = metrics.count_events(sm, ts, float(thr), refractory_s)
        ev = metrics.match_events(_events(pos, float(thr), refractory_s), spans, window_s, tol)
        rows.append(
            {
                "threshold": float(thr),  # unrounded: a grid point may sit one float above a score
                "false_alarms": n,
                "fah": round(n / hours, 4),
                "recall": round(ev.recall, 5),
                "frr": round(1 - ev.recall, 5),
            }
        )
    frame = pd.DataFrame(rows)
    # Below the threshold of most false alarms, scores sit above the threshold for long
    # stretches and upward crossings get rarer: fewer "events" and fewer hits. That branch
    # is no operating point anyone would pick; the DET curve is the branch above it.
    peak = int(np.argmax(frame["fah"].to_numpy()))  # rows are in rising threshold order
    return frame.iloc[peak:].reset_index(drop=True)


def _events(scored: Scored, thr: float, refractory_s: float) -> list[tuple[float, float]]:
    return decision.detect(scored.smoothed, scored.times, thr, refractory_s)


def frr_at_fah(curve: pd.DataFrame, target: float) -> dict[str, float]:
    """The lowest swept threshold whose FAH is at or under ``target``, and its FRR."""
    ok = curve[curve["fah"] <= target]
    row = ok.sort_values("threshold").iloc[0] if not ok.empty else curve.iloc[-1]
    return {k: float(row[k]) for k in ("threshold", "fah", "frr")}


def fah_at_recall(curve: pd.DataFrame, target: float) -> dict[str, float]:
    """The highest swept threshold whose recall is at or over ``target``, and its FAH."""
    ok = curve[curve["recall"] >= target]
    if ok.empty:
        return {"threshold": float("nan"), "fah": float("nan"), "recall": float("nan")}
    row = ok.sort_values("threshold").iloc[-1]
    return {k: float(row[k]) for k in ("threshold", "fah", "recall")}


def accepted_by_label(score: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Share of each label's test clips scored at or above the threshold.

    Why: the class "other" pools near-phrase words with everyday speech and noise, so its
    precision hides where false accepts come from; near-phrase words are where a wake word
    fails, and the background recordings FAH is measured on may hold none of them."""
    out: dict[str, Any] = {}
    for label in sorted(set(labels.tolist())):
        hit = score[labels == label] >= threshold
        out[label] = {
            "clips": int(hit.size),
            "accepted": int(hit.sum()),
            "rate": round(float(hit.mean()), 5),
        }
    return out


def clip_figures(
    raw: np.ndarray, y: np.ndarray, cal: Calibration, names: list[str], labels: np.ndarray
) -> tuple[dict[str, Any], metrics.Roc, np.ndarray]:
    from pipeline_lib.detect import decision

    score = decision.event_probability(raw, cal.temperature)
    positive = y != 0
    roc = metrics.roc_curve(score, positive)
    e, e_thr = metrics.eer(roc)
    figures: dict[str, Any] = {
        "clips": int(y.size),
        "roc_auc": round(metrics.roc_auc(roc), 5),
        "eer": round(e, 5),
        "eer_threshold": round(e_thr, 5),
        "pauc_0.1": round(metrics.pauc(score, positive, 0.1), 5),
        "pauc_0.05": round(metrics.pauc(score, positive, 0.05), 5),
    }
    pred = score >= cal.rule.threshold
    tp, fp, fn = (
        int((pred & positive).sum()),
        int((pred & ~positive).sum()),
        int((~pred & positive).sum()),
    )
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    figures |= {
        "precision": round(prec, 5),
        "recall": round(rec, 5),
        "f1": round(2 * prec * rec / (prec + rec), 5) if prec + rec > 0 else 0.0,
        "at_threshold": cal.rule.threshold,
    }
    figures["multiclass"] = metrics.classification(
        y, softmax(raw / cal.temperature).argmax(1), names
    )
    figures["accepted_by_label"] = accepted_by_label(score, labels, cal.rule.threshold)
    return figures, roc, score


def headline(frame: pd.DataFrame, params: Params, extra: dict[str, Any]) -> dict[str, Any]:
    """Where the positives the figures rest on came from, in one sentence first.

    A model trained and tested on synthetic voices can score recall 1.000 and still miss
    most real people, so the headline says when every test positive is synthetic, and
    leads with the user's real target recordings (``evaluate.extra`` clip sets) when there
    are any."""
    synthetic = {s.name for s in params.ingest.sources if s.synthetic}
    test = frame[(frame["role"] == "clip") & (frame["split"] == "test")]
    events = test[test["label"].map(params.task.class_of).fillna(0).astype(int) != 0]
    n = len(events)
    n_syn = int(events["source"].isin(synthetic).sum())
    real = {
        k: v for k, v in extra.items() if v.get("kind") == "clips" and int(v.get("events", 0)) > 0
    }
    kind = "none" if n == 0 else "synthetic" if n_syn == n else "real" if n_syn == 0 else "mixed"
    parts = []
    for name, v in real.items():
        parts.append(
            f"On your real recordings '{name}': recall {v['recall']:.3f} "
            f"(95% {v['recall_lo']:.3f}-{v['recall_hi']:.3f}) of {v['events']} target clips, "
            f"false accepts {v['false_accept_rate']:.3f} of {v['clips'] - v['events']} others."
        )
    if kind == "synthetic":
        parts.append(
            f"Every one of the {n} test positives is synthetic (source "
            f"{', '.join(sorted(set(events['source'])))}): the recall below says how well the "
            "model hears synthetic voices, not people."
            + (
                ""
                if real
                else " Add real recordings of the phrase as an evaluate.extra clips "
                "set to measure that."
            )
        )
    elif kind == "mixed":
        parts.append(f"{n_syn} of the {n} test positives are synthetic.")
    return {
        "test_positives": n,
        "synthetic_positives": n_syn,
        "positives": kind,
        "real_target_sets": sorted(real),
        "text": " ".join(parts),
    }


def _fah_block(recs: list[Recording]) -> dict[str, float]:
    n = sum(len(r.scored.events) for r in recs)
    return metrics.fah(n, sum(r.duration_s for r in recs) / 3600)


def _extra_streams(
    es: ExtraSet, layout: Layout, params: Params, scorer: Scorer, cal: Calibration
) -> dict[str, Any]:
    root = project_path(layout.root, es.root)
    if not root.exists():
        raise SoundopsError(f"evaluate.extra '{es.name}': root {root} does not exist.")
    files = [root] if root.is_file() else audio_files(root, params.ingest.extensions)
    if not files:
        raise SoundopsError(f"evaluate.extra '{es.name}': no audio files under {root}.")
    recs = _score_recordings(
        [(f.name, es.name, f) for f in files], scorer, cal, f"evaluate {es.name}"
    )
    return {"kind": "streams", "files": len(files)} | _fah_block(recs)


def _extra_clips(
    es: ExtraSet,
    layout: Layout,
    params: Params,
    scorer: Scorer,
    cal: Calibration,
    preroll: np.ndarray,
) -> dict[str, Any]:
    """Class folders of clips; a clip's score is its highest smoothed window after the
    pre-roll of test background (so the front end is warm, as in training)."""
    root = project_path(layout.root, es.root)
    if not root.is_dir():
        raise SoundopsError(f"evaluate.extra '{es.name}': root folder {root} does not exist.")
    rate = scorer.spec.rate
    ys, scores, fired = [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = es.label_map.get(folder.name, folder.name)
        if label not in params.labels:
            raise SoundopsError(
                f"evaluate.extra '{es.name}': folder '{folder.name}' is not one of labels "
                f"{params.labels}; map it with label_map."
            )
        cls = params.task.class_of(label)
        for path in tqdm(audio_files(folder, params.ingest.extensions), desc=f"evaluate {es.name}"):
            dec = read_audio(path)
            x = resample(dec.samples, dec.rate, rate)
            det = StreamingDetector(scorer, cal)
            sc = Scored.join([det.push(np.concatenate([preroll, x])), det.finish()])
            after = sc.times > preroll.size / rate
            ys.append(0 if cls is None else cls)
            scores.append(float(sc.smoothed[after].max()) if after.any() else 0.0)
            fired.append(any(t > preroll.size / rate for t, _ in sc.events))
    y, s, f = np.asarray(ys), np.asarray(scores), np.asarray(fired, bool)
    pos = y != 0
    out: dict[str, Any] = {"kind": "clips", "clips": int(y.size), "events": int(pos.sum())}
    if pos.any() and (~pos).any():
        out["roc_auc"] = round(metrics.roc_auc(metrics.roc_curve(s, pos)), 5)
    out["recall"] = round(float(f[pos].mean()), 5) if pos.any() else float("nan")
    lo, hi = metrics.wilson(int(f[pos].sum()), int(pos.sum()))
    out |= {"recall_lo": round(lo, 5), "recall_hi": round(hi, 5)}
    out["false_accept_rate"] = round(float(f[~pos].mean()), 5) if (~pos).any() else float("nan")
    return out


def _plots(
    roc: metrics.Roc,
    curve: pd.DataFrame,
    clip_score: np.ndarray,
    y: np.ndarray,
    names: list[str],
    rel: pd.DataFrame,
    op: dict[str, float],
) -> dict[str, str]:
    """The four pictures of the report, as data URIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, str] = {}
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(roc.fpr, roc.tpr)
    ax.plot([0, 1], [0, 1], "k:")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test clips)")
    figs["roc"] = html_page.figure_uri(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    c = curve[curve["fah"] > 0]
    ax.plot(c["fah"], c["frr"], ".-", ms=3)
    ax.plot([op["fah"]], [1 - op["recall"]], "r*", ms=12, label="operating point")
    ax.set_xscale("log")
    ax.set(xlabel="false alarms per hour", ylabel="false rejection rate", title="DET (streams)")
    ax.legend()
    figs["det"] = html_page.figure_uri(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    for k, name in enumerate(names):
        sel = y == k
        if sel.any():
            ax.hist(clip_score[sel], bins=bins.tolist(), alpha=0.6, label=name)
    ax.axvline(op["threshold"], color="r", ls="--", label="threshold")
    ax.set_yscale("log")
    ax.set(xlabel="event probability", ylabel="clips", title="Scores by class (test clips)")
    ax.legend()
    figs["hist"] = html_page.figure_uri(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([0, 1], [0, 1], "k:")
    ax.plot(rel["confidence"], rel["accuracy"], "o-")
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability (test clips)")
    figs["reliability"] = html_page.figure_uri(fig)
    return figs


def _snippet(
    path: Path | None, audio: np.ndarray | None, rate: int, t0: float, t1: float
) -> np.ndarray:
    a, b = max(0, int(t0 * rate)), max(0, int(t1 * rate))
    if audio is not None:
        return audio[a:b]
    assert path is not None
    data, _ = sf.read(str(path), start=a, stop=b, dtype="float32", always_2d=True)
    out: np.ndarray = data.mean(axis=1)
    return out


def run_evaluate(params: Params, layout: Layout) -> dict[str, Any]:
    """The evaluate stage: ``metrics/evaluate.json``, ``metrics/eval/*.csv`` plots and
    ``data/evaluate/report.html``."""
    from pipeline_lib.detect.checkpoint import load_model

    model, spec = load_model(layout.model)
    scorer = TorchScorer(model, spec)
    cal = Calibration.load(layout.calibration / "calibration.json")
    ev, rule = params.evaluate, cal.rule
    window_s = spec.frames * 0.01
    names = list(params.task.classes)

    raw, y = clip_scores(scorer, layout)
    clips, roc, clip_score = clip_figures(raw, y, cal, names, clip_labels(layout))
    _, rel = reliability(raw, y, cal.temperature)

    frame = load_split_manifest(layout)
    streams = frame[(frame["role"] == "stream") & frame["split"].isin(ev.background_splits)]
    if streams.empty:
        raise SoundopsError(
            f"evaluate: no long background recordings in split(s) {ev.background_splits}; "
            "false alarms per hour need them (evaluate.background_splits)."
        )
    background = _score_recordings(
        [
            (str(r.id), str(r.source), layout.ingest / str(r.path))
            for r in streams.sort_values("id").itertuples()
        ],
        scorer,
        cal,
        "evaluate background",
    )
    pos_audio, spans, pos = positive_stream(frame, layout, params, scorer, cal)
    match = metrics.match_events(pos.events, spans, window_s, ev.tolerance_s)
    curve = sweep(background, pos, spans, rule.refractory_s, window_s, ev.tolerance_s)

    hours = sum(r.duration_s for r in background) / 3600
    op = _fah_block(background) | {
        "threshold": rule.threshold,
        "smoothing": rule.smoothing,
        "refractory_s": rule.refractory_s,
        "preset": cal.preset,
        "recall": round(match.recall, 5),
        "positives": len(spans),
        "stray_detections": match.stray,
        "latency_median_s": round(float(np.nanmedian(match.latency_s)), 3)
        if match.hits.any()
        else float("nan"),
        "latency_p90_s": round(float(np.nanpercentile(match.latency_s, 90)), 3)
        if match.hits.any()
        else float("nan"),
    }
    lo, hi = metrics.wilson(int(match.hits.sum()), len(spans))
    op |= {"recall_lo": round(lo, 5), "recall_hi": round(hi, 5)}
    by_source = {
        src: _fah_block([r for r in background if r.source == src])
        for src in sorted({r.source for r in background})
    }
    fixed = {}
    for thr in ev.fixed_thresholds:
        n = metrics.count_events(
            [r.scored.smoothed for r in background],
            [r.scored.times for r in background],
            thr,
            rule.refractory_s,
        )
        m = metrics.match_events(
            _events(pos, thr, rule.refractory_s), spans, window_s, ev.tolerance_s
        )
        fixed[str(thr)] = metrics.fah(n, hours) | {"recall": round(m.recall, 5)}

    preroll = _preroll(background, spec.rate, params.features.preroll_s)
    extra = {}
    for es in ev.extra:
        extra[es.name] = (
            _extra_streams(es, layout, params, scorer, cal)
            if es.kind == "streams"
            else _extra_clips(es, layout, params, scorer, cal, preroll)
        )
    result: dict[str, Any] = {
        "headline": headline(frame, params, extra),
        "operating_point": op,
        "clips": clips,
        "frr_at_fah": {str(t): frr_at_fah(curve, t) for t in ev.fah_targets},
        "fah_at_recall": {str(t): fah_at_recall(curve, t) for t in ev.recall_targets},
        "fah_at_threshold": fixed,
        "fah_by_source": by_source,
        "extra": extra,
    }
    evidence = Evidence(
        roc, curve, clip_score, y, names, rel, background, pos, pos_audio, spans, match
    )
    _write(layout, params, result, evidence, spec.rate, window_s)
    log.info(
        "evaluate: %s FAH %.3f (95%% %.3f-%.3f) over %.2f h; recall %.4f of %d positives; "
        "clip ROC-AUC %.4f",
        cal.preset,
        op["fah"],
        op["fah_lo"],
        op["fah_hi"],
        op["hours"],
        op["recall"],
        len(spans),
        clips["roc_auc"],
    )
    return result


def _preroll(background: list[Recording], rate: int, seconds: float) -> np.ndarray:
    n = int(seconds * rate)
    if n == 0 or not background:
        return np.zeros(0, np.float32)
    data, _ = sf.read(str(background[0].path), stop=n, dtype="float32")
    return np.asarray(data, np.float32)


@dataclass
class Evidence:
    """What the report draws from: curves, clip scores, scored recordings, matches."""

    roc: metrics.Roc
    curve: pd.DataFrame
    clip_score: np.ndarray
    y: np.ndarray
    names: list[str]
    rel: pd.DataFrame
    background: list[Recording]
    pos: Scored
    pos_audio: np.ndarray
    spans: list[tuple[float, float]]
    match: metrics.Match


def _write(
    layout: Layout,
    params: Params,
    result: dict[str, Any],
    ev: Evidence,
    rate: int,
    window_s: float,
) -> None:
    roc, curve, clip_score, y, names, rel = ev.roc, ev.curve, ev.clip_score, ev.y, ev.names, ev.rel
    background, pos, pos_audio, spans, match = (
        ev.background,
        ev.pos,
        ev.pos_audio,
        ev.spans,
        ev.match,
    )
    op = result["operating_point"]
    plots = layout.metrics / "eval"
    plots.mkdir(parents=True, exist_ok=True)
    step = max(1, roc.fpr.size // 2000)
    write_csv(
        plots / "roc.csv", pd.DataFrame({"fpr": roc.fpr[::step], "tpr": roc.tpr[::step]}).round(5)
    )
    write_csv(plots / "det.csv", curve)
    hist = np.linspace(0, 1, 21)
    write_csv(
        plots / "hist.csv",
        pd.DataFrame(
            [
                {"score": round(float(hist[i]), 2), "class": name, "clips": int(c)}
                for k, name in enumerate(names)
                for i, c in enumerate(np.histogram(clip_score[y == k], hist)[0])
            ]
        ),
    )
    write_csv(plots / "reliability.csv", rel)
    write_doc(layout.metrics / "evaluate.json", EvaluateDoc.model_validate(result))

    figs = _plots(roc, curve, clip_score, y, names, rel, op)
    worst_fa = []
    for r in background:
        for t, _ in r.scored.events:
            sel = (r.scored.times >= t) & (r.scored.times <= t + op["refractory_s"])
            peak = float(r.scored.smoothed[sel].max()) if sel.any() else 0.0
            worst_fa.append((peak, t, r))
    worst_fa.sort(key=lambda w: -w[0])
    fa_rows = [
        {
            "recording": r.name,
            "source": r.source,
            "time_s": round(t, 2),
            "peak_score": round(peak, 4),
            "audio": html_page.audio_tag(
                _snippet(r.path, None, rate, t - window_s - 0.25, t + 0.5), rate
            ),
        }
        for peak, t, r in worst_fa[: params.evaluate.worst]
    ]
    misses = []
    for i, (on, off) in enumerate(spans):
        if not match.hits[i]:
            sel = (pos.times >= on) & (pos.times <= off + window_s)
            misses.append((float(pos.smoothed[sel].max()) if sel.any() else 0.0, on, off))
    misses.sort()
    miss_rows = [
        {
            "onset_s": round(on, 2),
            "best_score": round(s, 4),
            "audio": html_page.audio_tag(
                _snippet(None, pos_audio, rate, on - 0.25, off + 0.25), rate
            ),
        }
        for s, on, off in misses[: params.evaluate.worst]
    ]
    src = pd.DataFrame([{"source": k} | v for k, v in result["fah_by_source"].items()])
    per_rec = pd.DataFrame(
        [
            {"recording": r.name, "source": r.source, "minutes": round(r.duration_s / 60, 2)}
            | metrics.fah(len(r.scored.events), r.duration_s / 3600)
            for r in background
        ]
    )
    frr = pd.DataFrame([{"target_fah": k} | v for k, v in result["frr_at_fah"].items()])
    far = pd.DataFrame([{"target_recall": k} | v for k, v in result["fah_at_recall"].items()])
    clips = result["clips"]
    cm = pd.DataFrame(clips["multiclass"]["confusion"], columns=[f"pred {n}" for n in names])
    cm.insert(0, "true", names)
    head = result["headline"]
    warn = head["positives"] == "synthetic" and not head["real_target_sets"]
    intro = (
        f'<p class="{"warn" if warn else "lead"}"><b>{html.escape(head["text"])}</b></p>'
        if head["text"]
        else ""
    ) + (
        f"<p>Operating point <b>{op['preset']}</b>: threshold {op['threshold']:.4f}, smoothing "
        f"{op['smoothing']} windows. <b>{op['fah']:.3f} false alarms per hour</b> "
        f"(95% interval {op['fah_lo']:.3f}-{op['fah_hi']:.3f}; {op['false_alarms']} events in "
        f"{op['hours']:.2f} h of background) and <b>recall {op['recall']:.3f}</b> "
        f"(95% {op['recall_lo']:.3f}-{op['recall_hi']:.3f}) of {op['positives']} test positives "
        f"inserted into test background; median latency after the phrase ends "
        f"{op['latency_median_s']} s.</p>"
    )
    img = "".join(f'<img src="{u}" alt="{k}">' for k, u in figs.items())
    sections = [
        ("Curves", f'<div class="figs">{img}</div>'),
        (
            "Test clips",
            html_page.table(
                pd.DataFrame(
                    [
                        {
                            k: v
                            for k, v in clips.items()
                            if k not in ("multiclass", "accepted_by_label")
                        }
                    ]
                )
            )
            + html_page.table(cm)
            + '<p class="note">Clips scored at or above the threshold, by label: near-phrase '
            "words are where a wake word false-accepts.</p>"
            + html_page.table(
                pd.DataFrame([{"label": k} | v for k, v in clips["accepted_by_label"].items()])
            ),
        ),
        (
            "FRR at fixed FAH",
            '<p class="note">Threshold set on this test audio (points of the DET curve), so '
            "these are the best the model can do, not what the calibrated threshold gives.</p>"
            + html_page.table(frr),
        ),
        ("FAH at fixed recall", html_page.table(far)),
        ("False alarms by background source", html_page.table(src) + html_page.table(per_rec)),
        (
            "Worst false alarms",
            html_page.table(pd.DataFrame(fa_rows), ["audio"]) if fa_rows else "<p>None.</p>",
        ),
        (
            "Misses",
            html_page.table(pd.DataFrame(miss_rows), ["audio"]) if miss_rows else "<p>None.</p>",
        ),
    ]
    if result["extra"]:
        extra = pd.DataFrame([{"set": k} | v for k, v in result["extra"].items()])
        # the user's own recordings are the measure that matters: first, not last
        sections.insert(0, ("Your test sets", html_page.table(extra)))
    with atomic_path(layout.evaluate) as out:
        out.mkdir(parents=True)
        (out / "report.html").write_text(
            html_page.page("soundops evaluation", sections, intro), encoding="utf-8"
        )
        events = pd.DataFrame(
            [
                {
                    "recording": r.name,
                    "source": r.source,
                    "time_s": round(t, 3),
                    "score": round(s, 5),
                }
                for r in background
                for t, s in r.scored.events
            ],
            columns=["recording", "source", "time_s", "score"],
        )
        write_csv(out / "false_alarms.csv", events)
