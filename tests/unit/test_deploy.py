"""`shmserve build` bundles and `shmserve k8s render` manifests, checked offline.

Every rendered manifest is validated against the Kubernetes OpenAPI schemas of two
versions (kubernetes-validate, strict: unknown fields fail) and linted with yamllint.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

import shmserve
from shmserve.cli import main
from shmserve.deploy import plan
from shmserve.deploy.k8s import IN_FLIGHT_METRIC, PRESTOP_PAUSE_S, K8sOptions, render
from shmserve.errors import ConfigError
from shmserve.shm import budget

K8S_VERSIONS = ("1.28.0", "1.33.0")
YAMLLINT = YamlLintConfig("extends: default\nrules:\n  line-length: {max: 120}\n")

SERVICE = '''
import shmserve
from tests.runnables import EchoRunnable


class GpuEcho(EchoRunnable):
    SUPPORTED_RESOURCES = ("nvidia.com/gpu", "cpu")


echo = shmserve.Runner(EchoRunnable, name="echo", workers=2)
gpu = shmserve.Runner(GpuEcho, name="gpu", workers=1)
svc = shmserve.Service("Deploy_Test", runners=[echo, gpu], models=["handmade:latest"])
'''

CONFIG = """\
version: 1
api_server:
  workers: 2
  graceful_shutdown_timeout: 20
  grpc: {port: 50051}
runners:
  arena_mb: 4
  echo:
    resources: {cpu: 3}
  gpu:
    resources: {"nvidia.com/gpu": 1}
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a service module, a shmserve.yaml and a model store holding one model."""
    work = tmp_path / "proj"
    work.mkdir()
    (work / "deploy_service.py").write_text(SERVICE)
    (work / "shmserve.yaml").write_text(CONFIG)
    (work / "extra.txt").write_text("vocabulary\n")
    monkeypatch.setenv("SHMSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SHMSERVE_CONFIG", raising=False)
    monkeypatch.delenv("SHMSERVE_CONFIG_OPTIONS", raising=False)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    with shmserve.models.create("handmade") as draft:
        draft.path_of("weights.bin").write_bytes(b"\x00\x01")
    return work


def test_plan_sizes_shm_from_the_budget(project: Path) -> None:
    p = plan("deploy_service:svc", "shmserve.yaml")
    assert [(r.name, r.workers, r.gpus) for r in p.runners] == [("echo", 3, 0), ("gpu", 1, 1)]
    expected = budget.deployment_budget([budget.RunnerShm("echo", 3, 4), budget.RunnerShm("gpu", 1, 4)], clients=2)
    assert (p.shm_bytes, p.shm_mib) == (expected.total_bytes, expected.total_mib)
    assert p.name == "deploy-test"


def test_manifests_validate_on_two_kubernetes_versions_and_lint(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    assert main(["k8s", "render", "deploy_service:svc", "-f", "shmserve.yaml", "-o", str(out),
                 "--image", "registry.example/deploy:1", "--namespace", "ml", "--min-replicas", "2"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["configmap.yaml", "deployment.yaml", "hpa.yaml", "kustomization.yaml", "pdb.yaml", "service.yaml"]
    for path in out.iterdir():
        text = path.read_text()
        problems = list(linter.run(text, YAMLLINT))
        assert not problems, (path.name, [str(x) for x in problems])
        doc = yaml.safe_load(text)
        if doc["kind"] == "Kustomization":
            assert sorted(doc["resources"]) == sorted(f for f in files if f != "kustomization.yaml")
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_deployment_holds_what_shmserve_needs(project: Path) -> None:
    p = plan("deploy_service:svc", "shmserve.yaml")
    objs = render(p, K8sOptions(image="img:1", target_in_flight=12))
    pod = objs["deployment.yaml"]["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["command"][:3] == ["shmserve", "serve", "deploy_service:svc"]
    assert [(x["name"], x["containerPort"]) for x in c["ports"]] == [("http", 3000), ("grpc", 50051)]
    assert [(x["name"], x["port"]) for x in objs["service.yaml"]["spec"]["ports"]] == [("http", 3000), ("grpc", 50051)]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{p.shm_mib}Mi"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/dev/shm"] == "dshm" and mounts["/run/shmserve"] == "runtime"
    assert {"name": "SHMSERVE_RUNTIME_DIR", "value": "/run/shmserve/rt"} in c["env"]
    memory = int(c["resources"]["limits"]["memory"].removesuffix("Mi"))
    assert memory >= p.shm_mib + 256 * (1 + 2 + 3 + 1)  # the tmpfs counts against the limit
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_PAUSE_S)]
    assert pod["spec"]["terminationGracePeriodSeconds"] > 20 + PRESTOP_PAUSE_S
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True and pod["spec"]["securityContext"]["runAsUser"] != 0
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    hpa = objs["hpa.yaml"]["spec"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == IN_FLIGHT_METRIC
    assert hpa["metrics"][0]["pods"]["target"]["averageValue"] == "12"
    assert hpa["metrics"][1]["resource"]["name"] == "cpu"
    cm = yaml.safe_load(objs["configmap.yaml"]["data"]["shmserve.yaml"])
    assert cm["api_server"]["workers"] == 2 and cm["runners"]["echo"]["arena_mb"] == 4
    with pytest.raises(ConfigError, match="min-replicas"):
        render(p, K8sOptions(min_replicas=3, max_replicas=2))


def test_bundle_has_code_models_requirements_config_and_dockerfile(project: Path, tmp_path: Path) -> None:
    (project / "requirements.txt").write_text("requests==2.32.0\n")
    out = tmp_path / "bundle"
    assert main(["build", "deploy_service:svc", "-f", "shmserve.yaml", "-o", str(out),
                 "-r", "requirements.txt", "--include", "extra.txt"]) == 0
    assert (out / "src" / "deploy_service.py").read_text() == SERVICE
    assert (out / "src" / "extra.txt").is_file()
    model = shmserve.models.get("handmade:latest")
    assert (out / "models" / "handmade" / model.version / "weights.bin").read_bytes() == b"\x00\x01"
    assert "requests==2.32.0" in (out / "requirements.txt").read_text()
    manifest = json.loads((out / "bundle.json").read_text())
    p = plan("deploy_service:svc", "shmserve.yaml")
    assert manifest["shm_mib"] == p.shm_mib and manifest["models"] == [str(model.tag)]
    assert yaml.safe_load((out / "shmserve.yaml").read_text())["api_server"]["workers"] == 2
    docker = (out / "Dockerfile").read_text()
    assert f"--shm-size={p.shm_mib}m" in docker and f'io.shmserve.shm-size-mib="{p.shm_mib}"' in docker
    assert "\nUSER 10001:10001\n" in docker
    assert 'ENTRYPOINT ["shmserve", "serve", "deploy_service:svc"' in docker
    assert main(["build", "deploy_service:svc", "-o", str(out)]) == 2  # not empty: refused


def test_typo_in_the_file_fails_the_render(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "bad.yaml").write_text(textwrap.dedent("""\
        runners:
          ecoh: {arena_mb: 4}
    """))
    assert main(["k8s", "render", "deploy_service:svc", "-f", "bad.yaml", "-o", str(tmp_path / "k")]) == 2
    assert "did you mean runners.echo?" in capsys.readouterr().err


def test_the_schema_check_has_teeth(project: Path) -> None:
    deployment = render(plan("deploy_service:svc", "shmserve.yaml"))["deployment.yaml"]
    deployment["spec"]["template"]["spec"]["containers"][0]["shmSize"] = "1Gi"  # no such field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_runtime_dir_inside_a_world_writable_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the manifests point SHMSERVE_RUNTIME_DIR one level below the emptyDir (mode 0777)."""
    import os

    from shmserve.errors import RuntimeDirUnsafe
    from shmserve.lease import runtime_dir

    volume = tmp_path / "volume"
    volume.mkdir()
    os.chmod(volume, 0o777)
    monkeypatch.setenv("SHMSERVE_RUNTIME_DIR", str(volume))
    with pytest.raises(RuntimeDirUnsafe):
        runtime_dir()
    monkeypatch.setenv("SHMSERVE_RUNTIME_DIR", str(volume / "rt"))
    assert runtime_dir() == volume / "rt"


def test_every_model_framework_has_its_requirements() -> None:
    from types import SimpleNamespace

    from shmserve.deploy.bundle import FRAMEWORK_PACKAGES, requirements_txt
    from shmserve.models.model import ADAPTERS

    assert set(ADAPTERS) <= set(FRAMEWORK_PACKAGES)
    torch_model = SimpleNamespace(info={"framework": {"name": "pytorch", "version": "2.13.0+cpu"}})
    assert requirements_txt([torch_model], None, local_shmserve=True).splitlines()[1:] == ["./shmserve-src", "torch==2.13.0"]


def test_services_shipped_with_shmserve_are_not_copied(tmp_path: Path) -> None:
    from shmserve.deploy.bundle import _copy_service_code

    _copy_service_code("shmserve.examples.store_service:svc", tmp_path)
    assert list(tmp_path.iterdir()) == []  # installed with shmserve itself
