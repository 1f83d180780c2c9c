"""Which parts of shmserve may import which, and what importing shmserve does (nothing).

The parts are shmserve's subpackages and its top-level modules, the latter grouped by role
(the model, the calling side, IO descriptors); `ALLOWED` says what each may import. Every
import counts: at module level, inside functions and under ``TYPE_CHECKING``, since each is a
dependency a reader has to hold in mind. The table is itself free of cycles, so a change that
adds an import outside it (and with it, possibly, a cycle) fails here and has to say why in
the table.
"""
from __future__ import annotations

import ast
import os
import secrets
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import shmserve

ROOT = Path(shmserve.__file__).parent

#: top-level modules grouped into one part each; every other top-level module or subpackage is its own part
GROUPS = {
    "model": {"runnable", "runner", "runner_method", "local", "strategy"},  # the programming model, its configuration
    "calling": {"client", "link", "client_stream", "delivery", "doorbells", "pool", "publish"},  # the calling side of the transport
    # IO descriptors: HTTP bodies <-> Python values
    "io": {"io", "io_media", "io_pandas", "descriptor", "jsonarray", "jsonscan", "jsonvalue", "npy"},
}
#: the package's face (shmserve/__init__.py): its lazy table names modules as strings, not imports
FACE = "shmserve"

# What each part may import, lowest layers first. Every part may import the base: the exceptions, the
# settings read from the environment, and the tensor kinds.
BASE = {"errors", "settings", "tensors"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "settings": {"errors"},
    "tensors": {"errors"},
    "process": set(),
    "_native": set(),  # the optional C accelerators' loader: imported by the parts they speed up
    "traces": set(),
    "batching": set(),
    "collector": set(),  # the cyclic collector's settings in a serving process (start-up freeze, decode holds)
    "context": set(),
    "cli": set(),
    "deadline": set(),
    "watchdog": {"errors"},
    "lease": {"errors"},
    "model": {"deadline", "errors", "watchdog"},
    FACE: {"errors", "model"},
    "shm": {"errors", "lease", "watchdog", "model"},
    "registry": {"errors", "lease", "shm"},
    "worker_stats": {"lease", "registry"},
    "gpu": {"errors", "registry"},
    "calling": {"_native", "deadline", "errors", "gpu", "lease", "registry", "shm", "traces", "watchdog"},
    "worker": {"_native", "batching", "calling", "errors", "gpu", "lease", "model", "process", "registry", "shm", "watchdog",
               "worker_stats"},
    "io": {"_native", "collector", "errors"},
    "service": {"errors", "io", "model"},
    "oip": {"errors", "io", "model", "service", "shm"},  # shm: regions hand their mappings to shm.extra
    "config": {"errors", "model", "service", "shm", "watchdog"},
    "models": {"errors", "registry", "model", FACE},
    "http": {"_native", "calling", "collector", "config", "context", "errors", "io", "model", "oip", "process", "registry", "service", "shm",
             "traces", "worker", "worker_stats", FACE},
    "deploy": {"config", "errors", "models", "shm", FACE},
    "compat": {"context", "errors", "io", "model", "service"},
    "examples": {"io", "shm", FACE},
}


for _part_name, _allowed in ALLOWED.items():
    if _part_name not in BASE:
        _allowed |= BASE


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _part(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return FACE
    for group, members in GROUPS.items():
        if parts[1] in members:
            return group
    return parts[1]


def _imports(module: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The shmserve modules `module` imports, anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import mod` imports mod (and runs pkg's __init__, which the import of pkg covers
            # only when a name is not a module of it)
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
        else:
            continue
        for name in names:
            if name != FACE and not name.startswith(FACE + "."):
                continue
            while name not in mods:
                name = name.rsplit(".", 1)[0]
            found.add(name)
    return found


def part_graph() -> dict[str, set[str]]:
    """Which part imports which (edges inside one part left out)."""
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in mods.items():
        a = _part(module)
        graph[a]
        for target in _imports(module, path, mods):
            b = _part(target)
            # a package's __init__ importing its own children is not a dependency between parts
            if b != a:
                graph[a].add(b)
    return dict(graph)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph`, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)) is not None:
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)) is not None:
            return found
    return None


def test_the_allowed_table_has_no_cycle() -> None:
    assert _cycle(ALLOWED) is None, _cycle(ALLOWED)


def test_every_import_between_parts_is_allowed() -> None:
    graph = part_graph()
    unknown = sorted(set(graph) - set(ALLOWED))
    assert not unknown, f"new parts {unknown}: add each to ALLOWED (tests/unit/test_layering.py) with what it may import"
    extra = {a: sorted(bs - ALLOWED[a]) for a, bs in graph.items() if bs - ALLOWED[a]}
    assert not extra, (f"imports outside the allowed table: {extra}; import from a lower layer, or move the "
                       "shared code down, or (when the layering is meant to change) change ALLOWED")
    assert _cycle(graph) is None


def test_the_check_sees_a_forbidden_import_and_a_cycle() -> None:
    # The checker itself: an import of http from worker is outside the table, and closes a cycle.
    graph = part_graph()
    graph["worker"] = graph["worker"] | {"http"}
    assert "http" not in ALLOWED["worker"]
    assert _cycle(graph) is not None
    assert _part("shmserve.http.serve") == "http" and _part("shmserve.link") == "calling"
    mods = _modules()
    assert "shmserve.worker.group" in _imports("shmserve.http.serve", mods["shmserve.http.serve"], mods)


#: run in a fresh interpreter with a runtime directory and a name tag of its own (`_import_check`): what
#: importing shmserve loaded, started or created. Only what that interpreter made is looked at, so other
#: processes creating /dev/shm names meanwhile (other test sessions, servers) cannot make it fail.
_IMPORT_CHECK = """
import os, sys, threading, multiprocessing
import shmserve, shmserve.errors
{after_import}
frameworks = ('torch', 'cupy', 'tensorflow', 'jax', 'sklearn', 'onnxruntime', 'uvloop', 'httptools',
              'pydantic', 'grpc')
problems = []
loaded = [m for m in frameworks if m in sys.modules]
if loaded:
    problems.append(f'loaded {{loaded}}')
if threading.active_count() != 1:
    problems.append(f'threads {{threading.enumerate()}}')
if multiprocessing.active_children():
    problems.append(f'children {{multiprocessing.active_children()}}')
tag, rdir = os.environ['SHMSERVE_NAME_TAG'], os.environ['SHMSERVE_RUNTIME_DIR']
# every name shmserve makes carries the tag (shmserve.shm.segment.new_name); no other process has this one
named = sorted(n for n in (os.listdir('/dev/shm') if os.path.isdir('/dev/shm') else ()) if tag in n)
if named:
    problems.append(f'created /dev/shm names {{named}}')
# whatever the names: a segment or semaphore this process has open is in its maps or descriptors
held = {{line.split(None, 5)[5].strip() for line in open('/proc/self/maps') if '/dev/shm/' in line}}
held |= {{os.readlink(f'/proc/self/fd/{{fd}}') for fd in os.listdir('/proc/self/fd')
          if os.path.exists(f'/proc/self/fd/{{fd}}') and os.readlink(f'/proc/self/fd/{{fd}}').startswith('/dev/shm/')}}
if held:
    problems.append(f'holds {{sorted(held)}}')
# registry records, sockets and leases live in the runtime directory: it is made on first use only
if os.path.lexists(rdir):
    problems.append(f'created the runtime directory {{rdir}}: {{sorted(str(p) for p in __import__("pathlib").Path(rdir).rglob("*"))}}')
print(problems)
"""


def _import_check(tmp_path: Path, after_import: str = "") -> list[str]:
    """What a fresh interpreter that imports shmserve (then runs `after_import`) did that importing must not do."""
    tag = "zq" + secrets.token_hex(3)  # 'z' and 'q' appear in no lease id or random token (hex)
    env = {**os.environ, "SHMSERVE_NAME_TAG": tag, "SHMSERVE_RUNTIME_DIR": str(tmp_path / "run")}
    run = subprocess.run([sys.executable, "-c", _IMPORT_CHECK.format(after_import=after_import)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    problems = ast.literal_eval(run.stdout.strip().splitlines()[-1])
    assert isinstance(problems, list)
    return problems


def test_importing_shmserve_starts_nothing_and_loads_no_framework(tmp_path: Path) -> None:
    # A fresh interpreter: this test process already holds threads and frameworks.
    assert _import_check(tmp_path) == []


def test_the_import_check_sees_a_created_semaphore_and_a_runtime_file(tmp_path: Path) -> None:
    # The checker itself: a semaphore made at import (kept open: the process's exit unlinks it), and a lease
    # taken (its file in the runtime directory), are each reported.
    sem = _import_check(tmp_path / "a", "from shmserve.shm.signal import Signal; s = Signal.create()")
    assert any(p.startswith("created /dev/shm names ['sem.shmserve_") for p in sem), sem
    assert any(p.startswith("holds ['/dev/shm/sem.") for p in sem), sem  # glibc maps it under its making name
    held = _import_check(tmp_path / "b", "import mmap, posix_ipc; m = posix_ipc.SharedMemory('/shmserve_x" +
                         secrets.token_hex(8) + "', posix_ipc.O_CREX, size=4096); m.unlink()\n"
                         "b = mmap.mmap(m.fd, 4096)")
    assert [p.split(" ", 1)[0] for p in held] == ["holds"], held  # unlinked, so named nowhere, and still seen
    lease_taken = _import_check(tmp_path / "c", "from shmserve import lease; lease.current()")
    assert [p.split(":")[0] for p in lease_taken] == [f"created the runtime directory {tmp_path / 'c' / 'run'}"]
