"""Resumable results: one JSON file per (method, setting, scope) unit, so an interrupted run picks up where
it stopped and each call can stay short."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class UnitResult:
    method: str
    setting: str
    scope: str  # a family, or "all" when the unit ran the whole stream (batch mates or online state matter)
    counts: dict[str, tuple[int, int]]  # condition name -> (correct, images)
    seconds: float  # wall time inside the method's calls only
    images: int

    @staticmethod
    def path(directory: Path, method: str, setting: str, scope: str) -> Path:
        return directory / f"{method}__{setting}__{scope}.json"

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        target = self.path(directory, self.method, self.setting, self.scope)
        partial = target.with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(self), indent=1))
        partial.replace(target)  # atomic: a killed run never leaves a half-written result

    @classmethod
    def load(cls, path: Path) -> UnitResult:
        data = json.loads(path.read_text())
        data["counts"] = {k: (int(v[0]), int(v[1])) for k, v in data["counts"].items()}
        return cls(**data)


def load_all(directory: Path) -> list[UnitResult]:
    return [UnitResult.load(p) for p in sorted(directory.glob("*__*__*.json"))]
