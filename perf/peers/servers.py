"""Start a peer's server from its own venv on a loopback port; describe how to load it."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..env import child_env

PEERS_DIR = Path(__file__).resolve().parent
VENVS = PEERS_DIR / ".venvs"


@dataclass(frozen=True)
class PeerSpec:
    """How to run one peer: its venv, command, route and the bodies it accepts."""

    name: str
    version_hint: str
    bodies: tuple[str, ...]
    route: str
    ready_path: str | None  # GET path that answers 200 when ready; None: POST the route instead

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        return VENVS / self.name / "bin" / "python"

    def installed(self) -> bool:
        """Whether install.sh finished for this peer."""
        return self.python.exists() and (VENVS / self.name / ".installed").exists()

    def command(self, port: int) -> list[str]:
        """The command line that serves the common workload on `port`."""
        if self.name == "bentoml":
            return [str(VENVS / "bentoml" / "bin" / "bentoml"), "serve", "bentoml_service:svc", "--production",
                    "--api-workers", "1", "--host", "127.0.0.1", "--port", str(port)]
        if self.name == "mosec":
            return [str(self.python), "mosec_server.py", "--port", str(port), "--address", "127.0.0.1"]
        raise ValueError(f"unknown peer {self.name!r}")

    def start(self, port: int, log: Path) -> subprocess.Popen:
        """Start the server in its own process group, logging to `log`."""
        env = child_env(BENTOML_CONFIG=str(PEERS_DIR / "bentoml_config.yaml"), BENTOML_DO_NOT_TRACK="True")
        # the peer must not see the project's packages, only the common workload
        env["PYTHONPATH"] = env["PYTHONPATH"].split(":", 1)[1]
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = log.open("wb")
        return subprocess.Popen(self.command(port), cwd=PEERS_DIR, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def version(self) -> str:
        """The installed version, from the venv's pip freeze."""
        try:
            for line in (VENVS / self.name / ".installed").read_text().splitlines():
                if line.lower().startswith(self.name + "=="):
                    return line.split("==", 1)[1]
        except OSError:
            pass
        return "?"


PEERS = (
    PeerSpec("bentoml", "1.1.11", bodies=("json",), route="/predict", ready_path="/readyz"),
    PeerSpec("mosec", "0.9.x", bodies=("json", "npy"), route="/inference", ready_path=None),
)
