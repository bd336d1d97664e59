"""Host and process figures for heartbeats (psutil): CPU %, memory %, process RSS."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Sample:
    cpu: float
    memory: float
    rss: int


class Telemetry:
    """Non-blocking samples: CPU % is measured since the previous call (psutil's way)."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        psutil.cpu_percent(interval=None)  # prime the counter so the first sample is real

    def sample(self) -> Sample:
        cpu = min(100.0, max(0.0, float(psutil.cpu_percent(interval=None))))
        mem = min(100.0, max(0.0, float(psutil.virtual_memory().percent)))
        return Sample(cpu=cpu, memory=mem, rss=int(self._proc.memory_info().rss))
