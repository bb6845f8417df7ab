"""Per-family accuracy and per-image latency of every (method, setting), as rows and as Markdown."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.peers.cache import UnitResult
from dyntta.contract import BENCHMARK_CORRUPTIONS, CLEAN, GROUP_OF

FAMILY_COLUMNS: tuple[str, ...] = ("clean", "noise", "blur", "weather", "digital", "extra")


@dataclass
class Row:
    method: str
    setting: str
    accuracy: dict[str, float]  # family (and "mean15": the 15 benchmark corruptions) -> percent
    ms_per_image: float
    images: int
    note: str = ""


def _family(condition: str) -> str:
    return "clean" if condition == CLEAN else GROUP_OF[condition.split("/")[0]]


def summarise(units: list[UnitResult], method: str, setting: str, note: str = "") -> Row | None:
    mine = [u for u in units if u.method == method and u.setting == setting]
    if not mine:
        return None
    counts: dict[str, list[int]] = {}
    for u in mine:
        for condition, (correct, total) in u.counts.items():
            c = counts.setdefault(condition, [0, 0])
            c[0] += correct
            c[1] += total
    accuracy: dict[str, float] = {}
    for family in FAMILY_COLUMNS:
        pooled = [c for k, c in counts.items() if _family(k) == family]
        if pooled:
            accuracy[family] = 100 * sum(c[0] for c in pooled) / sum(c[1] for c in pooled)
    per_corruption: dict[str, list[int]] = {}
    for k, (correct, total) in counts.items():
        name = k.split("/")[0]
        if name in BENCHMARK_CORRUPTIONS:
            pc = per_corruption.setdefault(name, [0, 0])
            pc[0] += correct
            pc[1] += total
    if len(per_corruption) == len(BENCHMARK_CORRUPTIONS):
        accuracy["mean15"] = sum(100 * c / t for c, t in per_corruption.values()) / len(per_corruption)
    images = sum(u.images for u in mine)
    return Row(method, setting, accuracy, 1000 * sum(u.seconds for u in mine) / images, images, note)


def markdown(rows: list[Row]) -> str:
    head = ["method", "setting", *FAMILY_COLUMNS[:-1], "15-corruption mean", "4 extras", "ms/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r.accuracy[k]:.2f}" if k in r.accuracy else "-" for k in (*FAMILY_COLUMNS[:-1], "mean15", "extra")]
        method = r.method + (f" ({r.note})" if r.note else "")
        lines.append("| " + " | ".join([method, r.setting, *cells, f"{r.ms_per_image:.2f}"]) + " |")
    return "\n".join(lines)
