"""Where each stage reads and writes, relative to the project root.

``dvc.yaml`` lists the same paths; a test keeps the two in step. Paths are fixed by the
pipeline rather than set in params because DVC needs them literally to build its graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Paths of one project checkout (or of a throw-away test project)."""

    root: Path

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def raw(self) -> Path:
        """User recordings tracked with ``dvc add``/``dvc import``; a dependency of ingest."""
        return self.data / "raw"

    @property
    def generated(self) -> Path:
        return self.data / "generated"

    @property
    def ingest(self) -> Path:
        return self.data / "ingest"

    @property
    def manifest(self) -> Path:
        return self.ingest / "manifest.csv"

    @property
    def quarantine(self) -> Path:
        return self.ingest / "quarantine.csv"

    @property
    def validate(self) -> Path:
        return self.data / "validate"

    @property
    def gate(self) -> Path:
        """Written only when the data gate passes; split depends on it, not on the report."""
        return self.validate / "gate.json"

    @property
    def metrics(self) -> Path:
        """Small JSON metrics per stage, tracked by git (``cache: false`` in dvc.yaml)."""
        return self.root / "metrics"

    @property
    def split(self) -> Path:
        return self.data / "split"

    @property
    def features(self) -> Path:
        return self.data / "features"

    @property
    def model(self) -> Path:
        return self.data / "model"

    @property
    def train_state(self) -> Path:
        """Checkpoints for resuming a killed training run: not a DVC output (DVC would delete
        it before the stage runs) and git-ignored; only a matching fingerprint resumes."""
        return self.data / "train_state"

    @property
    def calibration(self) -> Path:
        return self.data / "calibration"

    @property
    def evaluate(self) -> Path:
        return self.data / "evaluate"

    @property
    def mine(self) -> Path:
        return self.data / "mine"

    @property
    def verifier(self) -> Path:
        return self.data / "verifier"

    @property
    def export(self) -> Path:
        return self.data / "export"

    @property
    def assignment(self) -> Path:
        return self.split / "assignment.csv"
