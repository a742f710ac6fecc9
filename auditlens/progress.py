"""What `auditlens audit` shows while it runs, from the events of tasks/progress.py.

On a terminal, a live display: each phase (checked, started, resolved, loaded, opened, audited, recorded) with its time,
each audit waiting, running with its time so far, or done with its verdict and duration (or taken from the cache),
and how many of the plan are done. Without one (CI, a pipe, or --verbose, whose Prefect lines would tear a live
display), plain lines: one as each phase begins and one as each audit ends, no escape codes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from auditlens.console import COLOURS
from tasks.progress import (AUDITS, CHECK, DONE, LOAD, OPEN, PHASES, RECORD, RESOLVE, START, Event, Finished, Phase, Plan,
                            Started, listen)

PHASE_TEXT = {
    CHECK: "checking the configuration, the model and the data",
    START: "starting the Prefect flow",
    RESOLVE: "resolving {detail}",
    LOAD: "loading {detail} and the data, predicting",
    OPEN: "opening the MLflow run",
    AUDITS: "auditing",
    RECORD: "recording to MLflow",
}
WITHOUT_DETAIL = {RESOLVE: "resolving the model", LOAD: "loading the model and the data, predicting"}
REASON_CHARS = 100


def phase_text(name: str, detail: str = "") -> str:
    if not detail:
        return WITHOUT_DETAIL.get(name, PHASE_TEXT.get(name, name))
    return PHASE_TEXT.get(name, name).format(detail=detail)


def seconds_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def one_line(reason: str, limit: int = REASON_CHARS) -> str:
    text = " ".join(reason.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


@dataclass
class AuditState:
    id: str
    started: float | None = None
    ended: float | None = None
    verdict: str = ""
    seconds: float | None = None  # its own duration, from the result
    cached: bool = False
    reason: str = ""

    @property
    def state(self) -> str:
        return "done" if self.ended is not None else "running" if self.started is not None else "waiting"

    def duration(self) -> float | None:
        if self.seconds is not None:
            return self.seconds
        return self.ended - self.started if self.ended is not None and self.started is not None else None


class AuditProgress:
    """What the events said so far, each stamped with ``clock`` when it came: the phases' starts and ends, each
    audit's state, the order in which audits ended. Not thread-safe: its renderers lock around it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.began = clock()
        self.ended: float | None = None
        self.phases: dict[str, tuple[float, float | None]] = {}
        self.details: dict[str, str] = {}
        self.current: str | None = None
        self.audits: dict[str, AuditState] = {}
        self.finished: list[str] = []
        self.failed = False

    def apply(self, event: Event) -> None:
        now = self.clock()
        if isinstance(event, Plan):
            self.audits = {audit_id: self.audits.get(audit_id) or AuditState(audit_id) for audit_id in event.ids} | \
                          {k: v for k, v in self.audits.items() if k not in event.ids}
        elif isinstance(event, Phase):
            self._end_phase(now)
            if event.name == DONE:
                self.ended = now
            else:
                self.current = event.name
                self.phases[event.name] = (now, None)
                self.details[event.name] = event.detail
        elif isinstance(event, Started):
            self.audit(event.id).started = now
        elif isinstance(event, Finished):
            audit = self.audit(event.id)
            if audit.ended is None:
                self.finished.append(event.id)
            audit.ended, audit.verdict, audit.seconds = now, event.verdict, event.seconds
            audit.cached, audit.reason = event.cached, event.reason

    def audit(self, audit_id: str) -> AuditState:
        return self.audits.setdefault(audit_id, AuditState(audit_id))

    def stop(self, failed: bool) -> None:
        now = self.clock()
        self.failed = failed and self.ended is None
        if not self.failed:
            self._end_phase(now)
        if self.ended is None:
            self.ended = now

    def _end_phase(self, now: float) -> None:
        if self.current is not None:
            self.phases[self.current] = (self.phases[self.current][0], now)
            self.current = None

    def elapsed(self) -> float:
        return (self.ended if self.ended is not None else self.clock()) - self.began

    def phase_seconds(self, name: str) -> float | None:
        if name not in self.phases:
            return None
        start, end = self.phases[name]
        return (end if end is not None else self.ended if self.ended is not None else self.clock()) - start


class Display:
    """A renderer of progress events: listens while its block runs; ``stop`` (also at the block's end, marking the
    phase that was running as failed when an exception ends it) leaves its last state on screen."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.progress = AuditProgress(clock)
        self.lock = threading.Lock()
        self._stopped = False
        self._listening = None

    def __call__(self, event: Event) -> None:
        with self.lock:
            if self._stopped:
                return
            self.progress.apply(event)
            self.changed(event)

    def changed(self, event: Event) -> None:
        """Called under the lock after ``event`` was applied."""

    def start(self) -> None:
        pass

    def stop(self, failed: bool = False) -> bool:
        """End the display (once: True the first time)."""
        with self.lock:
            if self._stopped:
                return False
            self._stopped = True
            self.progress.stop(failed)
            return True

    def __enter__(self) -> Display:
        self.start()
        self._listening = listen(self)
        self._listening.__enter__()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self._listening.__exit__(kind, value, traceback)
        self.stop(failed=kind is not None)


class PlainProgress(Display):
    """One line as each phase begins, one as each audit ends (``[3/12] drift  FAIL  4.2s  reason``); nothing else."""

    def __init__(self, stream: IO[str], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.stream = stream

    def changed(self, event: Event) -> None:
        line = None
        if isinstance(event, Phase) and event.name != DONE:
            line = phase_text(event.name, event.detail)
            if event.name == AUDITS and self.progress.audits:
                line += f" ({len(self.progress.audits)} audits)"
        elif isinstance(event, Finished):
            line = self.audit_line(self.progress.audits[event.id])
        if line is not None:
            self.stream.write(line + "\n")
            self.stream.flush()

    def audit_line(self, audit: AuditState) -> str:
        audits = self.progress.audits
        width = max(len(audit_id) for audit_id in audits)
        duration = audit.duration()
        took = "cached" if audit.cached else "-" if duration is None else seconds_text(duration)
        line = f"[{len(self.progress.finished)}/{len(audits)}] {audit.id:<{width}}  {audit.verdict:<7}  {took:>6}"
        reason = one_line(audit.reason)
        return f"{line}  {reason}" if reason else line


class LiveProgress(Display):
    """The live display: rich's Live, redrawn at each event and four times a second (the running times tick)."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.console = console
        self.final = False
        self.spinners: dict[str, Spinner] = {}  # one each, kept: a spinner's frame counts from its creation
        self.live = Live(console=console, get_renderable=self.render, refresh_per_second=4, transient=False,
                         redirect_stdout=True, redirect_stderr=True)

    def start(self) -> None:
        self.live.start(refresh=True)

    def __call__(self, event: Event) -> None:
        super().__call__(event)
        if not self._stopped:
            self.live.refresh()  # outside our lock: Live's refresh takes its own, then render takes ours

    def stop(self, failed: bool = False) -> bool:
        if not super().stop(failed):
            return False
        self.final = True
        self.live.stop()  # its last frame stays, drawn in full
        return True

    def render(self) -> RenderableType:
        with self.lock:
            return self._render()

    def _render(self) -> RenderableType:
        state = self.progress
        parts: list[RenderableType] = []
        for name in PHASES:
            if self.final and name not in state.phases:
                continue  # the last frame of an audit that failed early ends where it failed
            parts.append(self._phase_row(name))
            if name == AUDITS and state.audits and (AUDITS in state.phases or not self.final):
                parts.append(self._audit_rows())
        if not self.final or AUDITS in state.phases:
            done = len(state.finished)
            total = f"{done} of {len(state.audits)} audits done, " if state.audits else ""
            parts.append(Text(f"{total}{seconds_text(state.elapsed())} elapsed", style="dim"))
        return Group(*parts)

    def _phase_row(self, name: str) -> RenderableType:
        state = self.progress
        row = Table.grid(padding=(0, 1))
        row.add_column(width=1)
        row.add_column(no_wrap=True, overflow="ellipsis")
        cells: list[RenderableType] = []
        text = phase_text(name, state.details.get(name, ""))
        if name not in state.phases:
            row.add_row(Text("·", style="dim"), Text(text, style="dim"))
            return row
        seconds = seconds_text(state.phase_seconds(name) or 0.0)
        running = state.current == name
        if running and state.failed:
            icon: RenderableType = Text("✗", style="bold red")
        elif running and not self.final:
            icon = self.spinner(f"phase:{name}")
        else:
            icon = Text("✓", style="green")
        if name == AUDITS and state.audits:
            row.add_column(no_wrap=True)
            row.add_column(no_wrap=True)
            cells = [ProgressBar(total=len(state.audits), completed=len(state.finished), width=24),
                     Text(f"{len(state.finished)} of {len(state.audits)} done  {seconds}", style="dim")]
        else:
            row.add_column(no_wrap=True)
            cells = [Text(seconds, style="dim")]
        row.add_row(icon, Text(text, style="bold" if running else ""), *cells)
        return row

    def _audit_rows(self) -> RenderableType:
        state = self.progress
        audits = list(state.audits.values())
        shown, hidden = self._fit(audits)
        grid = Table.grid(padding=(0, 2))
        grid.add_column(width=2)  # indent, and the spinner of a running audit
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, min_width=7)
        grid.add_column(justify="right", no_wrap=True, min_width=6)
        grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        now = state.clock()
        for audit in shown:
            if audit.state == "done":
                duration = audit.duration()
                took = "cached" if audit.cached else "" if duration is None else seconds_text(duration)
                verdict = f"[{COLOURS.get(audit.verdict, 'default')}]{escape(audit.verdict)}[/]"
                grid.add_row("", escape(audit.id), verdict, Text(took, style="dim"), Text(one_line(audit.reason), style="dim"))
            elif audit.state == "running" and not self.final:
                grid.add_row(self.spinner(audit.id), escape(audit.id), "[cyan]running[/]",
                             seconds_text(now - audit.started), "")
            else:
                word = "stopped" if audit.state == "running" else "waiting"
                grid.add_row("", escape(audit.id), f"[dim]{word}[/]", "", "")
        if hidden:
            grid.add_row("", f"[dim]... and {hidden} more[/]", "", "", "")
        return grid

    def spinner(self, key: str) -> Spinner:
        return self.spinners.setdefault(key, Spinner("dots", style="cyan"))

    def _fit(self, audits: list[AuditState]) -> tuple[list[AuditState], int]:
        """The audits that fit the terminal (all of them in the last frame): the running ones, then those that ended
        last, then the next waiting, in the plan's order; and how many are left out."""
        room = self.console.size.height - len(PHASES) - 3
        if self.final or len(audits) <= room:
            return audits, 0
        room = max(room - 1, 1)
        order = {audit_id: index for index, audit_id in enumerate(self.progress.finished)}
        running = [a for a in audits if a.state == "running"]
        ended = sorted((a for a in audits if a.state == "done"), key=lambda a: -order[a.id])
        waiting = [a for a in audits if a.state == "waiting"]
        keep = {a.id for a in (running + ended + waiting)[:room]}
        return [a for a in audits if a.id in keep], len(audits) - len(keep)


def display_for(console: Console, plain: bool = False) -> Display:
    """The live display when ``console`` writes to a terminal (and ``plain`` is not asked for), else plain lines."""
    file = console.file
    try:
        terminal = file.isatty()
    except (AttributeError, ValueError, OSError):
        terminal = False
    if terminal and not plain and not console.is_dumb_terminal:
        return LiveProgress(console)
    return PlainProgress(file)
