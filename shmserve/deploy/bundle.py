"""``shmserve build``: a folder with everything an image of the service needs, and its Dockerfile.

Layout of the bundle::

    DIR/
      Dockerfile          non-root user, `shmserve serve` entrypoint, the /dev/shm it needs
      .dockerignore
      bundle.json         what was bundled: service, models, /dev/shm budget, Python version
      shmserve.yaml       the effective configuration (every key; `config show --yaml`)
      requirements.txt    shmserve, the models' frameworks, and the user's requirements
      src/                the service's module or package (and --include paths)
      models/             the stored models it uses, in the store's layout ($SHMSERVE_HOME)
      shmserve-src/       shmserve itself, when it runs from a source checkout (no wheel to pin)

No image is built here; ``docker build DIR`` does that.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .plan import DeploymentPlan

__all__ = ["build_bundle", "dockerfile", "APP_DIR", "APP_UID", "RUNTIME_DIR"]

APP_DIR = "/home/shmserve/app"
APP_UID = 10001
#: the runtime directory inside the container; its parent is a writable volume in Kubernetes
RUNTIME_DIR = "/run/shmserve/rt"
# Frameworks of stored models -> the pip distributions their adapter imports.
FRAMEWORK_PACKAGES: dict[str, tuple[str, ...]] = {
    "pytorch": ("torch",),
    "sklearn": ("scikit-learn",),
    "onnx": ("onnx", "onnxruntime"),
    "picklable": ("cloudpickle",),
    "xgboost": ("xgboost",),
    "lightgbm": ("lightgbm",),
    "transformers": ("transformers", "torch"),
    "keras": ("keras", "torch"),
}
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".pytest_cache", ".mypy_cache")


def build_bundle(p: DeploymentPlan, out: str | Path, requirements: str | None = None,
                 include: Iterable[str] = ()) -> Path:
    """Write the bundle of plan `p` into `out` (which must not exist or be empty)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {str(out)!r} is not empty; pick a new one or remove it")
    out.mkdir(parents=True, exist_ok=True)
    src = out / "src"
    src.mkdir()
    _copy_service_code(p.service_spec, src)
    for extra in include:
        path = Path(extra)
        if not path.exists():
            raise ConfigError(f"--include {extra!r} does not exist")
        if path.is_absolute() or ".." in path.parts:
            raise ConfigError(f"--include {extra!r}: give a path inside the current folder")
        target = src / path
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree(path, target, ignore=_IGNORE) if path.is_dir() else shutil.copy2(path, target))
    models = p.models()
    for m in models:
        shutil.copytree(m.path, out / "models" / m.name / m.version, ignore=_IGNORE)
    local_src = _copy_shmserve_source(out)
    (out / "requirements.txt").write_text(requirements_txt(models, requirements, local_src))
    (out / "shmserve.yaml").write_text(p.config.to_yaml(p.service.runners))
    (out / "bundle.json").write_text(json.dumps({
        "service": p.service_spec,
        "service_name": p.service.name,
        "models": [str(m.tag) for m in models],
        "shm_bytes": p.shm_bytes,
        "shm_mib": p.shm_mib,
        "shm_formula": p.shm_formula,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "shmserve": _shmserve_version(),
    }, indent=2) + "\n")
    (out / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\n")
    (out / "Dockerfile").write_text(dockerfile(p, has_models=bool(models), local_shmserve=local_src))
    return out


def _copy_service_code(spec: str, dest: Path) -> None:
    # The top-level module or package of the service: `pkg.sub:svc` copies all of pkg/.
    top = spec.partition(":")[0].split(".")[0]
    if top == "shmserve":  # an example shipped with shmserve: installed with it
        return
    found = importlib.util.find_spec(top)
    if found is None or found.origin is None:
        raise ConfigError(f"cannot find the source of service module {top!r}")
    origin = Path(found.origin)
    if origin.name == "__init__.py":
        shutil.copytree(origin.parent, dest / top, ignore=_IGNORE)
    elif origin.suffix == ".py":
        shutil.copy2(origin, dest / origin.name)
    else:
        raise ConfigError(f"service module {top!r} is {origin}, not Python source; bundle its source instead")


def _copy_shmserve_source(out: Path) -> bool:
    """Copy shmserve's source tree when running from a checkout (an editable install); True if copied."""
    pkg = Path(__file__).resolve().parents[1]
    root = pkg.parent
    if not (root / "pyproject.toml").is_file():
        return False
    dest = out / "shmserve-src"
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)
    shutil.copytree(pkg, dest / "shmserve", ignore=_IGNORE)
    return True


def _shmserve_version() -> str:
    from .. import __version__

    return str(__version__)


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def requirements_txt(models: Iterable[Any], user_file: str | None, local_shmserve: bool) -> str:
    """shmserve itself, each model framework at the version it was saved with, then the user's file."""
    lines = ["# generated by shmserve build"]
    lines.append("./shmserve-src" if local_shmserve else f"shmserve=={_shmserve_version()}")
    seen: set[str] = set()
    for m in models:
        fw = m.info.get("framework", {})
        for i, dist in enumerate(FRAMEWORK_PACKAGES.get(str(fw.get("name")), ())):
            version = fw.get("version") if i == 0 else _installed(dist)
            if dist not in seen:
                seen.add(dist)
                # A local label ("2.3.0+cpu") names a build on another index; pin the release.
                lines.append(f"{dist}=={str(version).split('+')[0]}" if version else dist)
    if user_file:
        try:
            lines += ["# from " + Path(user_file).name, Path(user_file).read_text().strip()]
        except OSError as exc:
            raise ConfigError(f"cannot read requirements file {user_file!r}: {exc.strerror}") from None
    return "\n".join(lines) + "\n"


def dockerfile(p: DeploymentPlan, has_models: bool, local_shmserve: bool) -> str:
    """The Dockerfile of the bundle (linted with hadolint in the tests)."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    spec = p.service_spec if ":" in p.service_spec else p.service_spec + ":svc"
    entry = ["shmserve", "serve", spec, "--config", f"{APP_DIR}/shmserve.yaml", "--host", "0.0.0.0",
             "--port", str(p.port)]
    image = p.name
    lines = [
        f"# Image of the shmserve service {p.service.name!r} ({p.service_spec}), generated by `shmserve build`.",
        f"# It needs {p.shm_mib} MiB of /dev/shm ({p.shm_formula}).",
        "# Docker's default /dev/shm is 64 MiB, so give it the size:",
        f"#   docker build -t {image} . && docker run --rm --shm-size={p.shm_mib}m -p {p.port}:{p.port} {image}",
        f"FROM python:{py}-slim",
        f'LABEL org.opencontainers.image.title="{image}" \\',
        f'      io.shmserve.service="{p.service_spec}" \\',
        f'      io.shmserve.shm-size-mib="{p.shm_mib}"',
        "ENV PYTHONDONTWRITEBYTECODE=1 \\",
        "    PYTHONUNBUFFERED=1 \\",
        "    PIP_NO_CACHE_DIR=1 \\",
        f"    SHMSERVE_HOME={APP_DIR} \\",
        f"    SHMSERVE_RUNTIME_DIR={RUNTIME_DIR}",
        f"RUN groupadd --system --gid {APP_UID} shmserve \\",
        f"    && useradd --system --uid {APP_UID} --gid shmserve --create-home --home-dir /home/shmserve shmserve \\",
        f"    && install -d -o {APP_UID} -g {APP_UID} -m 0755 /run/shmserve",
        f"WORKDIR {APP_DIR}",
        "COPY requirements.txt ./",
    ]
    if local_shmserve:
        lines.append("COPY shmserve-src ./shmserve-src")
    lines += [
        "RUN pip install --no-cache-dir -r requirements.txt",
        f"COPY --chown={APP_UID}:{APP_UID} shmserve.yaml bundle.json ./",
    ]
    if has_models:
        lines.append(f"COPY --chown={APP_UID}:{APP_UID} models ./models")
    lines += [
        f"COPY --chown={APP_UID}:{APP_UID} src ./src",
        f"WORKDIR {APP_DIR}/src",
        f"USER {APP_UID}:{APP_UID}",
        f"EXPOSE {p.port}",
        "ENTRYPOINT " + json.dumps(entry),
    ]
    return "\n".join(lines) + "\n"
