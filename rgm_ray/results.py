"""The common shape of what stage entry points return.

Every stage function (``generate_sample_set``, ``weigh``, ``resample``, ``evaluate_sets``,
``run_sweep``, ...) returns a frozen dataclass derived from :class:`StageResult`: typed fields for
what callers use, ``metrics`` for the measured numbers (also logged to MLflow), ``to_dict()`` for
JSON (``--json``, ``pipeline.json``) and ``message`` for the one line the CLI prints. The CLI and the
pipeline consume the same object, so a stage reports the same facts whoever called it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class StageResult:
    out: str
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Fields (``metrics`` flattened into the top level) as JSON-able values."""
        facts: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "metrics":
                facts.update(value)
            else:
                facts[f.name] = value
        return facts

    @property
    def message(self) -> str:
        return f"wrote {self.out}"
