from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline_lib.audio import io as audio_io
from pipeline_lib.base.errors import AudioError, PathEscapeError
from pipeline_lib.base.paths import resolve_inside
from tests.conftest import tone, write_audio


def test_stereo_is_downmixed_and_resampled(tmp_path: Path) -> None:
    left = tone(0.5, 44100, 440)
    stereo = np.stack([left, -left * 0.5], axis=1)
    dec = audio_io.read_audio(write_audio(tmp_path / "s.wav", stereo, 44100))
    assert dec.orig_channels == 2 and dec.rate == 44100 and dec.samples.ndim == 1
    assert np.allclose(dec.samples, (left - left * 0.5) / 2, atol=1e-3)
    out = audio_io.resample(dec.samples, 44100, 16000)
    assert out.size == 8000


def test_resample_keeps_a_tone_in_band() -> None:
    x = tone(1.0, 8000, 1000)
    y = audio_io.resample(x, 8000, 16000)
    spectrum = np.abs(np.fft.rfft(y))
    assert y.size == 16000 and abs(int(spectrum.argmax()) - 1000) <= 1


@pytest.mark.parametrize("suffix", [".ogg", ".mp3", ".flac"])
def test_compressed_formats_decode(tmp_path: Path, suffix: str) -> None:
    import soundfile as sf

    path = tmp_path / f"t{suffix}"
    subtype = {".ogg": "VORBIS", ".mp3": "MPEG_LAYER_III", ".flac": "PCM_16"}[suffix]
    sf.write(str(path), tone(0.5, 16000), 16000, subtype=subtype)
    dec = audio_io.read_audio(path)
    assert dec.rate == 16000 and dec.samples.size > 7000


def test_corrupt_empty_and_nan_files_are_refused(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioError, match=r"corrupt\.wav: undecodable audio"):
        audio_io.read_audio(corrupt)
    empty = write_audio(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty\.wav: empty audio"):
        audio_io.read_audio(empty)
    bad = tone(0.1, 16000)
    bad[10] = np.nan
    nan = write_audio(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: audio holds NaN"):
        audio_io.read_audio(nan)


def test_levels_and_normalisation() -> None:
    x = np.concatenate([np.full(10, 1.0, np.float32), np.zeros(90, np.float32)])
    lv = audio_io.levels(x, 0.999)
    assert lv.peak_dbfs == pytest.approx(0.0) and lv.clipped_fraction == pytest.approx(0.1)
    y = audio_io.normalize_peak(tone(0.1, 16000, amp=0.1) + 0.2, -6.0)
    assert abs(float(y.mean())) < 1e-3
    assert 20 * np.log10(np.abs(y).max()) == pytest.approx(-6.0, abs=0.01)


def test_content_id_depends_on_samples_only() -> None:
    a = audio_io.to_pcm16(tone(0.1, 16000))
    assert audio_io.content_id(a, 16000) == audio_io.content_id(a.copy(), 16000)
    b = a.copy()
    b[0] += 1
    assert audio_io.content_id(a, 16000) != audio_io.content_id(b, 16000)


def test_resolve_inside_refuses_escapes(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    assert resolve_inside(tmp_path / "root", "a/b.wav", "m.csv").name == "b.wav"
    with pytest.raises(PathEscapeError, match=r"m\.csv: path '\.\./x\.wav' resolves outside"):
        resolve_inside(tmp_path / "root", "../x.wav", "m.csv")
    with pytest.raises(PathEscapeError):
        resolve_inside(tmp_path / "root", "/etc/passwd", "m.csv")
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(PathEscapeError):
        resolve_inside(tmp_path / "root", "link/x.wav", "m.csv")
