"""What an audit returns: metrics under stable keys, typed artifacts, checks and a verdict."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import posixpath
import re
import threading
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal

import pandas as pd


class Verdict(str, Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    ERROR = "ERROR"
    SKIPPED = "SKIPPED"

    @property
    def severity(self) -> int:
        # FAIL outranks ERROR: a failed check is evidence against the model, an error is only the
        # absence of evidence. SKIPPED never degrades a verdict.
        return {"SKIPPED": 0, "PASS": 1, "WARN": 2, "ERROR": 3, "FAIL": 4}[self.value]


def worst(verdicts: list[Verdict]) -> Verdict:
    """The most severe verdict; SKIPPED when there is nothing else."""
    return max(verdicts, key=lambda v: v.severity, default=Verdict.SKIPPED)


# MLflow's rule for metric, param and tag keys (mlflow.utils.validation): word characters,
# '.', '-', ' ', ':', '/'; a key must not change under path normalisation; at most 250 characters.
_KEY_ALLOWED = re.compile(r"^[/\w.\- :]+$")
_KEY_PART_INVALID = re.compile(r"[^\w.\- :]")  # inside one part, '/' is replaced too
MAX_KEY_LENGTH = 250


def is_valid_key(key: str) -> bool:
    normalised = posixpath.normpath(key)
    return (
        bool(_KEY_ALLOWED.match(key))
        and len(key) <= MAX_KEY_LENGTH
        and normalised == key
        and not normalised.startswith(("..", "/"))
    )


MAX_KEY_PART = 64  # a name from the data longer than this is cut, with a hash of the whole name: keys stay <= 250


def key_part(name: Any) -> str:
    """A column or class name made safe inside a metric key ('income ($)' -> 'income ___'). A name longer than
    MAX_KEY_PART (a free-text segment value) keeps its start and gains a hash of the whole, so that two long names
    stay two keys and no key passes MLflow's 250 characters."""
    text = _KEY_PART_INVALID.sub("_", str(name)).strip().strip(".") or "_"
    if len(text) > MAX_KEY_PART:
        import hashlib

        digest = hashlib.sha256(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:8]
        text = f"{text[:MAX_KEY_PART - 9].rstrip('.')}_{digest}"
    return text


_RENDERING = threading.Lock()  # one figure is rasterised once, whichever thread reads it first


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    try:
        canvas.print_png(buffer, metadata={"Software": None})  # no version string: byte-stable output
    except ValueError:
        # text from the data ('price $ in \frac{ $') read as TeX that does not parse: auditlens draws no maths, so
        # every label is drawn as the plain text it is
        from matplotlib.text import Text

        for text in fig.findobj(Text):
            text.set_parse_math(False)
        buffer = io.BytesIO()
        canvas.print_png(buffer, metadata={"Software": None})
    return buffer.getvalue()


def metric_key(*parts: Any) -> str:
    return ".".join(key_part(p) for p in parts)


# audits.rendering.html.csp_meta() (a page without scripts): core may not import rendering, and
# tests/unit/test_rendering_escape.py holds the two equal.
_SCRIPTLESS_POLICY = ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; script-src \'none\'; '
                      "img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'\">")

# html: a page of its own, linked from the report; fragment: an HTML snippet shown inside the report (escaped
# by the audit that builds it: no scripts), also written as a file.
ArtifactKind = Literal["figure", "table", "html", "fragment", "json"]
_SUFFIX = {"figure": ".png", "table": ".json", "html": ".html", "fragment": ".html", "json": ".json"}


@dataclass(frozen=True)
class Artifact:
    """One typed output of an audit. ``name`` is a file name inside the audit's folder.

    A figure keeps its matplotlib ``Figure`` until its PNG is first read (``content``, ``encoded()``, pickling): an
    audit draws it, and only a result that is recorded or reported pays for rasterising it (about a quarter of an
    audit's time on small data)."""

    name: str
    kind: ArtifactKind
    payload: Any  # figure: a matplotlib Figure, or its PNG bytes once rendered; table: DataFrame; html: str; json: JSON-ready
    title: str = ""

    def __post_init__(self) -> None:
        if not self.name.endswith(_SUFFIX[self.kind]):
            raise ValueError(f"artifact {self.name!r} of kind {self.kind} must end with {_SUFFIX[self.kind]}")

    @property
    def content(self) -> Any:
        """figure: PNG bytes (rendered on first read); table: DataFrame; html: str; json: JSON-ready dict/list."""
        if self.kind == "figure" and not isinstance(self.payload, bytes):
            with _RENDERING:
                if not isinstance(self.payload, bytes):
                    object.__setattr__(self, "payload", _png(self.payload))
        return self.payload

    def encoded(self) -> bytes:
        """The artifact's file, as written to the run's artifacts: each kind encodes itself."""
        if self.kind == "figure":
            return self.content
        if self.kind == "table":
            return self.content.to_json(orient="split", index=False, date_format="iso").encode("utf-8")
        if self.kind == "html":
            return self.content.encode("utf-8")
        if self.kind == "fragment":  # a snippet: wrapped so that it opens as a page of its own too, under the policy of every page
            return (f'<!doctype html><html><head>{_SCRIPTLESS_POLICY}<meta charset="utf-8">'
                    f"<title>{html.escape(self.title or self.name)}</title></head><body>{self.content}</body></html>").encode("utf-8")
        return json.dumps(self.content, indent=2, default=str).encode("utf-8")

    def __reduce__(self) -> tuple:  # a result sent to another process carries PNG bytes, not a live Figure
        return (type(self), (self.name, self.kind, self.content, self.title))

    @classmethod
    def figure(cls, name: str, fig: Any, title: str = "") -> Artifact:
        """A matplotlib ``Figure`` (object API, no pyplot state), rendered to PNG at its own dpi when first read."""
        return cls(f"{name}.png", "figure", fig, title)

    @classmethod
    def table(cls, name: str, frame: pd.DataFrame, title: str = "") -> Artifact:
        return cls(f"{name}.json", "table", frame.reset_index(drop=True), title)

    @classmethod
    def html(cls, name: str, text: str, title: str = "") -> Artifact:
        return cls(f"{name}.html", "html", text, title)

    @classmethod
    def fragment(cls, name: str, text: str, title: str = "") -> Artifact:
        return cls(f"{name}.html", "fragment", text, title)

    @classmethod
    def json(cls, name: str, data: Any, title: str = "") -> Artifact:
        return cls(f"{name}.json", "json", data, title)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "figure":
            content: Any = base64.b64encode(self.content).decode("ascii")
        elif self.kind == "table":
            content = json.loads(self.content.to_json(orient="split", index=False))
        else:
            content = self.content
        return {"name": self.name, "kind": self.kind, "title": self.title, "content": content}


@dataclass(frozen=True)
class CheckResult:
    """A threshold applied to a metric. ``passed`` is None when the check could not be evaluated."""

    metric: str
    rule: str
    severity: Literal["fail", "warn"]
    value: float | None
    passed: bool | None
    message: str
    # True: the data cannot support the check (its metric is undefined, or could never cross the bound on this data);
    # such a check neither passes nor fails, and an audit whose checks cannot tell is SKIPPED with the reason
    cannot_tell: bool = False
    # the threshold's bounds and baseline, kept with the check so that a finding can say by how much it missed them
    # (``value`` is then the change from ``compare_to``, a fraction of it when ``relative``)
    low: float | None = None
    high: float | None = None
    compare_to: str | None = None
    relative: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "rule": self.rule,
            "severity": self.severity,
            "value": _finite_or_none(self.value),
            "passed": self.passed,
            "message": self.message,
            "cannot_tell": self.cannot_tell,
            "min": self.low,
            "max": self.high,
            "compare_to": self.compare_to,
            "relative": self.relative,
        }


@dataclass(frozen=True)
class AuditResult:
    """The outcome of one audit. Metric keys are full MLflow keys once the runner has namespaced them."""

    audit: str
    verdict: Verdict = Verdict.PASS
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: tuple[Artifact, ...] = ()
    checks: tuple[CheckResult, ...] = ()
    info: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    # the values a metric could take on this data, where that is narrower than its definition (e.g. an excess z on
    # few held-out rows): a threshold whose bound lies beyond it could never fail, and says it cannot tell
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the values a metric reaches by chance alone on this data (with probability at least the audit's alpha): a bound
    # crossed inside this band is no evidence, and the check says it cannot tell instead of failing
    chance: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def skipped(cls, audit: str, reason: str) -> AuditResult:
        return cls(audit=audit, verdict=Verdict.SKIPPED, reason=reason)

    def with_(self, **changes: Any) -> AuditResult:
        return replace(self, **changes)

    def to_dict(self, with_content: bool = True) -> dict[str, Any]:
        return {
            "audit": self.audit,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "metrics": {k: _finite_or_none(v) for k, v in self.metrics.items()},
            "checks": [c.to_dict() for c in self.checks],
            "info": dict(self.info),
            "duration_s": round(self.duration_s, 3),
            "artifacts": [
                a.to_dict() if with_content else {"name": a.name, "kind": a.kind, "title": a.title}
                for a in self.artifacts
            ],
        }


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)
