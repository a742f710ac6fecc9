"""The progress of an audit (tasks/progress.py, the events; auditlens/progress.py, what the command shows of them),
and `auditlens --version`. Fake events in, exact lines out; no flow runs here (tests/e2e/test_progress.py runs one)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from importlib.metadata import PackageNotFoundError, version

import pytest
from rich.console import Console

from auditlens.progress import LiveProgress, PlainProgress, display_for, one_line, seconds_text
from tasks import progress
from tasks.progress import AUDITS, CHECK, DONE, LOAD, OPEN, RECORD, RESOLVE, START, Finished, Phase, Plan, Started


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


# --- the events ---------------------------------------------------------------------------------------------------
def test_listeners_hear_every_event_in_order_and_only_while_they_listen():
    heard, also = [], []
    assert not progress.listening()
    progress.emit(Started("before"))  # nobody listens: nothing happens
    with progress.listen(heard.append):
        with progress.listen(also.append):
            assert progress.listening()
            progress.plan(["a", "b"])
            progress.phase(AUDITS)
            progress.emit(Started("a"))
        progress.emit(Finished("a", "PASS", 1.0))
    progress.emit(Started("after"))
    assert heard == [Plan(("a", "b")), Phase(AUDITS), Started("a"), Finished("a", "PASS", 1.0)]
    assert also == heard[:3]
    assert not progress.listening()


def test_nothing_is_built_when_nobody_listens():
    def ids():
        raise AssertionError("the plan's ids were read with nobody listening")
        yield

    progress.plan(ids())
    progress.phase(LOAD, "m v1")


def test_a_listener_that_raises_is_ignored_and_the_others_still_hear():
    heard = []

    def broken(event):
        raise RuntimeError("the display broke")

    with progress.listen(broken), progress.listen(heard.append):
        progress.emit(Started("a"))  # does not raise
    assert heard == [Started("a")]


def test_events_from_many_threads_all_arrive_while_others_subscribe():
    heard, lock = [], threading.Lock()

    def count(event):
        with lock:
            heard.append(event)

    def emitter(n: int):
        for i in range(500):
            progress.emit(Started(f"{n}-{i}"))

    def churn():
        for _ in range(200):
            with progress.listen(lambda event: None):
                pass

    with progress.listen(count):
        threads = [threading.Thread(target=emitter, args=(n,)) for n in range(6)] + [threading.Thread(target=churn)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(heard) == 3000 and len(set(heard)) == 3000
    assert not progress.listening()


# --- plain lines (no terminal) ---------------------------------------------------------------------------------------
def feed(display, clock: Clock) -> None:
    """An audit of three: one from the cache, one that passes, one that ends in an error without a result."""
    steps = [
        (0.0, Phase(CHECK)), (0.1, Plan(("performance", "shap", "data_quality"))), (2.0, Phase(START)),
        (1.0, Phase(RESOLVE, "models:/credit@champion")), (0.2, Phase(LOAD, "credit v3")), (1.5, Phase(OPEN)),
        (0.3, Phase(AUDITS)), (0.0, Finished("data_quality", "WARN", 2.7, cached=True, reason="data_quality.failed = 1")),
        (0.0, Started("shap")), (0.0, Started("performance")),
        (0.4, Finished("performance", "PASS", 0.38, reason="1 check(s) passed")),
        (4.0, Finished("shap", "ERROR", None, reason="ModelWorkerError: the model's process ended\n  (exit code -9)")),
        (0.1, Phase(RECORD)), (0.5, Phase(DONE)),
    ]
    for seconds, event in steps:
        clock.tick(seconds)
        display(event)


def test_plain_lines_one_per_phase_and_one_per_audit_as_it_ends():
    out, clock = io.StringIO(), Clock()
    with PlainProgress(out, clock) as display:
        feed(progress.emit, clock)
    assert display.progress.elapsed() == pytest.approx(10.1)
    assert out.getvalue().splitlines() == [
        "checking the configuration, the model and the data",
        "starting the Prefect flow",
        "resolving models:/credit@champion",
        "loading credit v3 and the data, predicting",
        "opening the MLflow run",
        "auditing (3 audits)",
        "[1/3] data_quality  WARN     cached  data_quality.failed = 1",
        "[2/3] performance   PASS       0.4s  1 check(s) passed",
        "[3/3] shap          ERROR      4.4s  ModelWorkerError: the model's process ended (exit code -9)",
        "recording to MLflow",
    ]
    assert "\x1b" not in out.getvalue()


def test_plain_lines_say_which_phase_without_details_and_shorten_long_reasons():
    out, clock = io.StringIO(), Clock()
    display = PlainProgress(out, clock)
    display(Phase(RESOLVE))
    display(Phase(LOAD))
    display(Finished("drift", "FAIL", 75.0, reason="x" * 300))
    assert out.getvalue().splitlines() == ["resolving the model", "loading the model and the data, predicting",
                                           f"[1/1] drift  FAIL      1m15s  {'x' * 97}..."]
    display.stop()
    display(Phase(RECORD))  # after its end a display says nothing more
    assert len(out.getvalue().splitlines()) == 3


def test_text_helpers():
    assert [seconds_text(s) for s in (0.04, 4.25, 59.94, 61, 3725)] == ["0.0s", "4.2s", "59.9s", "1m01s", "1h02m"]
    assert one_line("a\n  b\tc") == "a b c" and one_line("word " * 30, 20) == "word word word wo..."


# --- the live display (terminal) -------------------------------------------------------------------------------------
def frame(display: LiveProgress) -> str:
    console = Console(file=io.StringIO(), width=120, height=40, color_system=None, legacy_windows=False)
    console.print(display.render())
    return console.file.getvalue()


def live(clock: Clock, height: int = 40) -> LiveProgress:
    console = Console(file=io.StringIO(), width=120, height=height, force_terminal=True, color_system=None)
    return LiveProgress(console, clock)


def test_the_live_display_shows_phases_running_audits_with_their_time_and_verdicts():
    clock = Clock()
    display = live(clock)
    for event in (Phase(CHECK), Plan(("performance", "shap", "data_quality")), Phase(START), Phase(RESOLVE, "models:/m/1"),
                  Phase(LOAD, "m v1"), Phase(OPEN), Phase(AUDITS), Finished("data_quality", "WARN", 2.7, cached=True),
                  Started("shap"), Started("performance")):
        clock.tick(0.5)
        display(event)
    clock.tick(1.25)
    display(Finished("performance", "PASS", 0.3, reason="1 check(s) passed"))
    clock.tick(0.5)
    assert [line.rstrip() for line in frame(display).splitlines()] == [
        "✓ checking the configuration, the model and the data 1.0s",
        "✓ starting the Prefect flow 0.5s",
        "✓ resolving models:/m/1 0.5s",
        "✓ loading m v1 and the data, predicting 0.5s",
        "✓ opening the MLflow run 0.5s",
        "⠋ auditing ━━━━━━━━━━━━━━━━         2 of 3 done  3.2s",
        "    performance   PASS       0.3s  1 check(s) passed",
        "⠋   shap          running    2.2s",
        "    data_quality  WARN     cached",
        "· recording to MLflow",
        "2 of 3 audits done, 6.8s elapsed",
    ]


def test_the_last_frame_of_an_audit_that_failed_ends_at_the_phase_that_failed():
    clock = Clock()
    display = live(clock)
    display(Phase(CHECK))
    display(Plan(("performance",)))
    clock.tick(3.0)
    display(Phase(START))
    clock.tick(1.0)
    display.progress.stop(failed=True)
    display.final = True
    assert [line.rstrip() for line in frame(display).splitlines()] == [
        "✓ checking the configuration, the model and the data 3.0s", "✗ starting the Prefect flow 1.0s"]


def test_a_plan_taller_than_the_terminal_shows_the_running_and_latest_audits_and_counts_the_rest():
    clock = Clock()
    display = live(clock, height=14)  # room for 4 rows of audits
    ids = [f"audit{n:02d}" for n in range(12)]
    display(Plan(tuple(ids)))
    display(Phase(AUDITS))
    for audit_id in ids[:3]:
        display(Started(audit_id))
        display(Finished(audit_id, "PASS", 1.0))
    display(Started("audit05"))
    text = frame(display)
    shown = [audit_id for audit_id in ids if audit_id in text]
    assert shown == ["audit01", "audit02", "audit05"] and "... and 9 more" in text
    display.final = True  # the last frame holds every audit
    assert all(audit_id in frame(display) for audit_id in ids)


def test_the_display_is_live_only_on_a_terminal_and_never_with_verbose():
    piped = Console(file=io.StringIO())
    assert isinstance(display_for(piped), PlainProgress)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Console(file=Terminal(), force_terminal=True)
    assert isinstance(display_for(terminal), LiveProgress)
    assert isinstance(display_for(terminal, plain=True), PlainProgress)  # --verbose: Prefect's lines would tear it
    forced = Console(file=io.StringIO(), force_terminal=True)  # FORCE_COLOR in CI: still a pipe
    assert isinstance(display_for(forced), PlainProgress)


# --- auditlens --version ---------------------------------------------------------------------------------------------
def test_version_prints_auditlens_and_its_stack_as_installed_without_importing_it():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom auditlens.cli import app\n"
            "result = CliRunner().invoke(app, ['--version'])\nprint(result.exit_code)\nprint(result.output, end='')\n"
            "print(sorted(m for m in ('prefect', 'mlflow', 'pandas', 'sklearn', 'shap', 'torch', 'great_expectations') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    exit_code, *printed, imported = done.stdout.splitlines()
    assert exit_code == "0" and imported == "[]", done.stdout + done.stderr
    expected = []
    for name in ("auditlens", "prefect", "mlflow", "shap", "lime", "scikit-learn", "great-expectations", "pandas", "numpy", "torch"):
        try:
            expected.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            assert name == "torch"  # the deep extra; every other is a dependency
    assert printed == expected
