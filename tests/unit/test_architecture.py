"""The shape of the house: imports run auditlens -> flows -> tasks -> audits, never in a circle; flows/ holds flows;
audits stay pure; each part of MLflow has one writer; our generic package names belong to this repository alone."""

from __future__ import annotations

import ast
import importlib.util
from importlib.metadata import distributions
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("auditlens", "flows", "tasks", "audits")  # in import order: each imports only those after it


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_audits_never_import_prefect_or_mlflow():
    offenders = {str(p.relative_to(ROOT)): sorted(imported_modules(p) & {"prefect", "mlflow"}) for p in python_files("audits")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_imports_only_run_downwards():
    """auditlens (the command) -> flows -> tasks -> audits: nothing imports a package before it in PACKAGES, so only
    the tests (and the benchmarks that time the command) import auditlens."""
    upward = {package: set(PACKAGES[: PACKAGES.index(package)]) for package in PACKAGES}
    assert upward["audits"] == {"auditlens", "flows", "tasks"} and upward["auditlens"] == set()
    offenders = [
        (str(p.relative_to(ROOT)), sorted(imported_modules(p) & banned))
        for package, banned in upward.items()
        for p in python_files(package)
        if imported_modules(p) & banned
    ]
    assert offenders == []


ORCHESTRATION = ("auditlens", "flows", "tasks")  # the packages whose modules must not import one another in a circle


def module_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Each module of ``packages`` under ``root`` (dotted name) -> the modules of ``packages`` it imports, anywhere in
    the file: an import deferred into a function is still a dependency (deferring hides a cycle, it does not remove it).
    ``from a.b import c`` depends on the module a.b.c if there is one, else on a.b; a package's parents, which Python
    imports on the way, are not counted."""
    paths = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:  # the longest prefix of ``name`` that is one of our modules
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package, one level up per extra dot
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    found.add(known(f"{base}.{alias.name}") if f"{base}.{alias.name}" in paths else known(base))
        graph[module] = {name for name in found if name is not None}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: each set of modules that reach one another (Tarjan's strongly connected
    components of two or more modules, or one module importing itself), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1 or module in graph.get(module, ()):
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(cycles)


def test_import_cycles_are_found_on_a_small_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}, "f": {"f"}, "g": {"h"}, "h": {"g"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["f"], ["g", "h"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_module_graph_sees_deferred_relative_and_from_package_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "x.py").write_text("from pkg.y import f\nimport json\n")
    (package / "y.py").write_text("def f():\n    from pkg import x\n    return x\n")  # deferred: still a cycle
    (package / "sub" / "z.py").write_text("from ..y import f\nfrom . import w\n")
    (package / "sub" / "w.py").write_text("import pkg.sub.z as z\n")
    graph = module_graph(tmp_path, ("pkg",))
    assert graph["pkg.x"] == {"pkg.y"} and graph["pkg.y"] == {"pkg.x"}
    assert graph["pkg.sub.z"] == {"pkg.y", "pkg.sub.w"} and graph["pkg.sub.w"] == {"pkg.sub.z"}
    assert import_cycles(graph) == [["pkg.sub.w", "pkg.sub.z"], ["pkg.x", "pkg.y"]]


def test_no_import_cycles_among_our_modules():
    graph = module_graph(ROOT, ORCHESTRATION)
    assert {"tasks.audit_tasks", "tasks.adapters.tracking"} <= graph["flows.audit_model"]  # it sees our imports
    assert {"auditlens.console", "auditlens.serving", "flows.audit_model"} <= graph["auditlens.cli"]
    assert import_cycles(graph) == []


def test_adapters_never_import_prefect_and_flows_never_import_mlflow():
    adapters = [str(p.relative_to(ROOT)) for p in (ROOT / "tasks" / "adapters").rglob("*.py") if "prefect" in imported_modules(p)]
    above = [str(p.relative_to(ROOT)) for package in ("auditlens", "flows") for p in python_files(package)
             if "mlflow" in imported_modules(p)]
    assert adapters == [] and above == []


def flows_defined(path: Path) -> list[str]:
    """The functions of a module decorated with Prefect's ``@flow`` (bare or called)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef)
            and any(ast.unparse(d.func if isinstance(d, ast.Call) else d) in ("flow", "prefect.flow") for d in node.decorator_list)]


def test_flows_holds_flows_only():
    """Every module of flows/ defines a Prefect flow; the command, its printing and the deployments live in
    auditlens/. (The detector sees both spellings of the decorator, and nothing else.)"""
    assert flows_defined(ROOT / "flows" / "watch_registry.py") == ["watch_registry"]
    assert flows_defined(ROOT / "auditlens" / "serving.py") == []
    not_flows = [str(p.relative_to(ROOT)) for p in python_files("flows") if p.name != "__init__.py" and not flows_defined(p)]
    assert not_flows == []


# The calls that change an MLflow store, by the part of it they change.
RUN_WRITES = {
    "create_experiment", "restore_experiment", "create_run", "update_run", "set_terminated", "delete_run",
    "log_metric", "log_metrics", "log_param", "log_params", "log_batch", "log_artifact", "log_artifacts", "log_dict",
    "log_text", "log_figure", "log_image", "log_table", "log_inputs", "set_tag", "set_tags", "delete_tag",
    "start_run", "end_run", "set_logged_model_tags",
}  # fmt: skip
VERSION_WRITES = {
    "set_model_version_tag", "delete_model_version_tag", "set_registered_model_alias", "delete_registered_model_alias",
    "update_model_version", "transition_model_version_stage", "set_registered_model_tag", "delete_registered_model_tag",
}  # fmt: skip
REGISTRATION_WRITES = {
    "create_registered_model", "create_model_version", "create_logged_model", "log_model_artifacts",
    "finalize_logged_model", "log_model", "save_model", "register_model",
}  # fmt: skip
WEBHOOK_WRITES = {"create_webhook", "update_webhook", "delete_webhook"}
WRITERS = {  # each module that writes to MLflow, and the one part it writes
    # the audit's run: params, metrics, artifacts, run tags, run status; and the reference that stands for the audited
    # version in the run's experiment (MlflowSink.version_reference), a logged model with no files
    "tasks/adapters/mlflow_sink.py": RUN_WRITES | {"create_logged_model", "finalize_logged_model"},
    "tasks/adapters/version_state.py": VERSION_WRITES,  # the audit state on model versions, and aliases
    "tasks/adapters/demo.py": REGISTRATION_WRITES | {"create_run", "set_terminated"},  # a model, by its training run
    "tasks/adapters/webhook.py": WEBHOOK_WRITES,  # MLflow's webhook to our receiver
}
ALL_WRITES = RUN_WRITES | VERSION_WRITES | REGISTRATION_WRITES | WEBHOOK_WRITES


def mlflow_writes(source: str) -> list[tuple[int, str]]:
    """(line, call) of each call in ``source`` that writes to MLflow: a write method on MLflow or a client of it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ALL_WRITES:
            receiver = ast.unparse(node.func.value)
            if "mlflow" in receiver or "client" in receiver:
                found.append((node.lineno, ast.unparse(node.func)))
    return found


def test_the_write_detector_sees_writes_through_clients_and_mlflow():
    source = ("self.client.set_model_version_tag(n, v, k, x)\nclient.create_run(e)\nmlflow.log_metric('a', 1)\n"
              "sink.log_batch(run_id)\nclient.get_run(run_id)\n")
    assert [call for _, call in mlflow_writes(source)] == ["self.client.set_model_version_tag", "client.create_run",
                                                           "mlflow.log_metric"]


def test_only_the_four_writers_write_to_mlflow_each_its_own_part():
    """The sink writes runs, version_state.py version tags and aliases, demo.py registers models, webhook.py the
    webhook; no other module writes to MLflow (it asks one of them), and none of the four writes another's part."""
    offenders, writing = [], set()
    for package in PACKAGES:
        for path in python_files(package):
            name = path.relative_to(ROOT).as_posix()
            for line, call in mlflow_writes(path.read_text(encoding="utf-8")):
                writing.add(name)
                if call.rpartition(".")[2] not in WRITERS.get(name, set()):
                    offenders.append(f"{name}:{line} {call}")
    assert offenders == []
    assert writing == set(WRITERS)  # each writer is found writing: the rule is not vacuous


@pytest.mark.parametrize("package", PACKAGES)
def test_package_names_resolve_to_this_repository(package):
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve().parent == ROOT / package


def _top_level_names(dist) -> set[str]:
    top_level = dist.read_text("top_level.txt")
    if top_level:
        return {line.strip() for line in top_level.splitlines() if line.strip()}
    names = set()
    for file in dist.files or []:
        parts = file.parts
        if len(parts) > 1 and not parts[0].endswith((".dist-info", ".egg-info", ".data")) and parts[0] != "..":
            names.add(parts[0])
        elif len(parts) == 1 and parts[0].endswith(".py"):
            names.add(parts[0][:-3])
    return names


def test_no_installed_dependency_provides_our_package_names():
    from importlib.metadata import distribution

    # the detector itself works: it finds the packages that distributions do install
    assert "mlflow" in _top_level_names(distribution("mlflow")) and "prefect" in _top_level_names(distribution("prefect"))
    clashes = {
        dist.metadata["Name"]: sorted(_top_level_names(dist) & set(PACKAGES))
        for dist in distributions()
        if dist.metadata["Name"] != "auditlens"
    }
    assert {name: found for name, found in clashes.items() if found} == {}


def test_flow_files_are_not_named_like_libraries():
    # Prefect puts a flow file's folder first on sys.path: flows/mlflow.py would shadow mlflow.
    installed = {name for dist in distributions() for name in _top_level_names(dist)}
    clashing = sorted(p.stem for p in (ROOT / "flows").glob("*.py") if p.stem in installed)
    assert clashing == []


def test_audits_load_without_torch():
    """torch is the optional 'deep' extra: every built-in audit (network audits included) imports, and a plan
    validates, without importing torch, captum or shap; only running a network audit needs them."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from audits.core.registry import BUILTIN_AUDITS, get_audit_class\n"
            "for name in BUILTIN_AUDITS: get_audit_class(name)\n"
            "import tasks.adapters.inputs, tasks.adapters.models, tasks.adapters.demo\n"
            "print(sorted(m for m in ('torch', 'captum', 'shap', 'skimage') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ------------------------------------------------------------------ the audits' floor plan: one audit, one file
GROUPS = ("data", "performance", "explain", "uncertainty", "projections")  # by the question an audit answers
# what each part of audits/ may import from audits/ (its own part included)
MAY_IMPORT = {
    "core": {"core"},
    "methods": {"core", "methods"},  # shared logic: sampling, tests, SHAP and LIME helpers, MMD, networks...
    "rendering": {"core", "methods", "rendering"},  # figures and HTML shared by audits, the report
    **{group: {"core", "methods", "rendering"} for group in GROUPS},  # an audit never imports another audit
}


def audits_parts_imported(path: Path) -> set[str]:
    """The parts of audits/ a module imports (audits.<part>...), anywhere in the file."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        parts.update(n.split(".")[1] for n in names if n.startswith("audits.") and n.count(".") >= 1)
    return parts


def audit_classes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.name for node in tree.body if isinstance(node, ast.ClassDef)
            and any(ast.unparse(base) in ("Audit", "PartialAudit") for base in node.bases)]


def test_each_builtin_audit_lives_in_a_file_named_after_it_in_its_question_folder():
    from audits.core.registry import BUILTIN_AUDITS

    misplaced = {}
    for name, target in BUILTIN_AUDITS.items():
        module, _, cls = target.partition(":")
        parts = module.split(".")
        path = ROOT.joinpath(*parts).with_suffix(".py")
        if not (len(parts) == 3 and parts[1] in GROUPS and parts[2] == name and audit_classes(path) == [cls]):
            misplaced[name] = target
    assert misplaced == {}


def test_question_folders_hold_one_audit_per_file_and_nothing_else():
    from audits.core.registry import BUILTIN_AUDITS

    registered = {target.partition(":")[0] for target in BUILTIN_AUDITS.values()}
    found = {}
    for group in GROUPS:
        for path in sorted((ROOT / "audits" / group).glob("*.py")):
            if path.name != "__init__.py":
                found[f"audits.{group}.{path.stem}"] = len(audit_classes(path))
    assert set(found) == registered
    assert {m: n for m, n in found.items() if n != 1} == {}
    assert sorted(p.name for p in (ROOT / "audits").iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted(["core", "methods", "rendering", *GROUPS])


def test_audits_import_only_core_methods_and_rendering():
    offenders = {}
    for path in python_files("audits"):
        part = path.relative_to(ROOT / "audits").parts[0]
        if part not in MAY_IMPORT:
            continue  # audits/__init__.py and audits/testing.py (the public checks, which run every audit)
        banned = audits_parts_imported(path) - MAY_IMPORT[part]
        if banned:
            offenders[str(path.relative_to(ROOT))] = sorted(banned)
    assert offenders == {}


def test_the_import_rules_see_an_audit_importing_another():
    probe = ROOT / "audits" / "explain" / "__probe_not_a_module__.py"
    try:
        probe.write_text("from audits.uncertainty.ood import OODAudit\nfrom audits.methods import sampling\n")
        assert audits_parts_imported(probe) - MAY_IMPORT["explain"] == {"uncertainty"}
    finally:
        probe.unlink()


def test_methods_draw_nothing_and_only_rendering_writes_html():
    drawing = {"matplotlib", "jinja2", "html"}
    offenders = {}
    for path in python_files("audits"):
        part = path.relative_to(ROOT / "audits").parts[0]
        imported = imported_modules(path)
        # core encodes each artifact kind (a figure to PNG, a fragment wrapped as a page) but draws and builds none
        banned = drawing if part == "methods" else {"jinja2", "html"} if part in GROUPS else {"jinja2"} if part == "core" else set()
        if imported & banned:
            offenders[str(path.relative_to(ROOT))] = sorted(imported & banned)
    assert offenders == {}
