"""Fixtures for the FireWorks scale-out tests: a real MongoDB wire-protocol server
(mongoeco on SQLite, Python >= 3.13, in its own venv) and per-test LaunchPad / job store /
worker configurations built from the templates in ``workflows/``.

Set MONGOECO_PYTHON to an interpreter that has ``mongoeco[wire]`` to skip the venv set-up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORKFLOWS = REPO / "workflows"
SERVER_SCRIPT = REPO / "scripts" / "mongoeco_server.py"
SETUP_SCRIPT = REPO / "scripts" / "mongoeco_server.sh"
FAKE_MP_KEY = "FAKEmpKEY-" + uuid.uuid4().hex[:16]
BIN = Path(sys.executable).parent
if str(HERE) not in sys.path:  # the job module must import as ``mf_fw_jobs`` here and in workers
    sys.path.insert(0, str(HERE))


def _has_mongoeco(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import mongoeco, bson"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _mongoeco_python() -> str:
    explicit = os.environ.get("MONGOECO_PYTHON")
    if explicit:
        if not _has_mongoeco(explicit):
            pytest.skip(f"MONGOECO_PYTHON={explicit} cannot import mongoeco[wire]")
        return explicit
    venv = Path(os.environ.get("MONGOECO_VENV", REPO / ".venv-mongoeco"))
    python = venv / "bin" / "python"
    if python.exists() and _has_mongoeco(str(python)):
        return str(python)
    # idempotent set-up; needs a Python >= 3.13 and PyPI
    try:
        res = subprocess.run(["bash", str(SETUP_SCRIPT), "setup"], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"mongoeco set-up failed ({exc}); run: scripts/mongoeco_server.sh setup")
    if res.returncode != 0 or not _has_mongoeco(str(python)):
        pytest.skip("mongoeco (MongoDB wire server, needs Python >= 3.13) is not available: "
                    f"{(res.stderr or res.stdout).strip()[-300:]}  -- run: scripts/mongoeco_server.sh setup")
    return str(python)


class MongoecoServer:
    def __init__(self, python: str, data_dir: Path):
        self.data_dir = data_dir
        self.port_file = data_dir / "port"
        self.log = data_dir / "server.log"
        with open(self.log, "w") as log_fh:  # the server writes to its own copy of the descriptor
            self.proc = subprocess.Popen(
                [python, str(SERVER_SCRIPT), "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", "0",
                 "--port-file", str(self.port_file)],
                stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"mongoeco server did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        self.host = "127.0.0.1"
        self.port = int(self.port_file.read_text())

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    def client(self):
        import pymongo

        return pymongo.MongoClient(self.host, self.port, serverSelectionTimeoutMS=10000)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


@pytest.fixture(scope="session")
def mongoeco_server(tmp_path_factory):
    """A mongoeco server (SQLite engine, temp data dir) on a free 127.0.0.1 port, for the session."""
    python = _mongoeco_python()
    server = MongoecoServer(python, tmp_path_factory.mktemp("mongoeco"))
    try:
        server.client().admin.command("ping")
        yield server
    finally:
        server.stop()


class FireworksEnv:
    """One test's LaunchPad, job store and worker configs (unique databases on the shared server)."""

    def __init__(self, server: MongoecoServer, root: Path):
        self.server = server
        self.root = root
        tag = uuid.uuid4().hex[:10]
        self.lp_db, self.store_db = f"fw_{tag}", f"jobs_{tag}"

        lp = yaml.safe_load((WORKFLOWS / "my_launchpad.yaml").read_text())
        lp.update(host=server.host, port=server.port, name=self.lp_db, username=None, password=None,
                  authsource=None, logdir=str(root / "lp_logs"), strm_lvl="INFO")
        (root / "lp_logs").mkdir()
        self.launchpad_file = root / "my_launchpad.yaml"
        self.launchpad_file.write_text(yaml.safe_dump(lp))

        cfg = yaml.safe_load((WORKFLOWS / "jobflow.yaml").read_text())
        stores = [cfg["JOB_STORE"]["docs_store"], *cfg["JOB_STORE"]["additional_stores"].values()]
        for s in stores:
            s.update(host=server.host, port=server.port, database=self.store_db)
            for k in ("username", "password", "auth_source"):
                s.pop(k, None)
            if s["type"] == "GridFSStore":
                s["compression"] = False  # plain bytes, so the secret search below sees inside
        self.jobflow_file = root / "jobflow.yaml"
        self.jobflow_file.write_text(yaml.safe_dump(cfg))
        self.store_spec = cfg["JOB_STORE"]

        self.fworker_files = {}
        for kind in ("gpu", "cpu", "dft"):
            fw = yaml.safe_load((WORKFLOWS / f"my_fworker_{kind}.yaml").read_text())
            fw["name"] = f"{kind}-worker"
            path = root / f"my_fworker_{kind}.yaml"
            path.write_text(yaml.safe_dump(fw))
            self.fworker_files[kind] = path

        self.log = str(root / "executions.log")
        self.env = dict(os.environ)
        self.env.update(
            JOBFLOW_CONFIG_FILE=str(self.jobflow_file),
            MP_API_KEY=FAKE_MP_KEY,
            PYTHONPATH=os.pathsep.join([str(HERE), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
            PYTHONUNBUFFERED="1",
        )
        self.env.pop("FW_CONFIG_FILE", None)
        self.workers: list[subprocess.Popen] = []
        from fireworks import LaunchPad

        self._lp = LaunchPad.from_file(str(self.launchpad_file))
        self._lp.reset("", require_password=False, max_reset_wo_password=1000)  # ids + indices

    # ---------------------------------------------------------------- clients
    @property
    def lp(self):
        return self._lp

    def store(self):
        from jobflow import JobStore

        store = JobStore.from_dict_spec(self.store_spec)
        store.connect()
        return store

    # ---------------------------------------------------------------- workers
    def set_categories(self, kind: str, categories: list[str]) -> None:
        path = self.fworker_files[kind]
        fw = yaml.safe_load(path.read_text())
        fw["category"] = list(categories)
        path.write_text(yaml.safe_dump(fw))

    def rlaunch(self, kind: str, name: str, *args: str, timeout: int = 120) -> subprocess.Popen:
        """Start ``rlaunch rapidfire`` for worker ``kind`` in its own folder and process group."""
        cwd = self.root / name
        cwd.mkdir(exist_ok=True)
        cmd = [str(BIN / "rlaunch"), "-l", str(self.launchpad_file), "-w", str(self.fworker_files[kind]),
               "--loglvl", "INFO", "rapidfire", "--sleep", "1", "--timeout", str(timeout), *args]
        with open(self.root / f"{name}.out", "ab") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.workers.append(proc)
        return proc

    def lpad(self, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "lpad"), "-l", str(self.launchpad_file), *args], env=self.env,
                              cwd=self.root, capture_output=True, text=True, timeout=timeout)

    def wait(self, procs, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {p.args} did not finish in {timeout}s:\n{self.worker_output()}")

    def worker_output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.root.glob("*.out"))

    def kill_workers(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)

    # ---------------------------------------------------------------- inspection
    def all_documents(self) -> dict[str, bytes]:
        """Every document of the LaunchPad and job-store databases, as BSON bytes, by collection."""
        import bson

        client = self.server.client()
        out = {}
        for db in (self.lp_db, self.store_db):
            for coll in client[db].list_collection_names():
                out[f"{db}.{coll}"] = b"".join(bson.encode(d) for d in client[db][coll].find())
        client.close()
        return out

    def files_containing(self, needle: str) -> list[Path]:
        data = needle.encode()
        return [p for p in self.root.rglob("*") if p.is_file() and data in p.read_bytes()]


@pytest.fixture
def fw_env(mongoeco_server, tmp_path):
    env = FireworksEnv(mongoeco_server, tmp_path)
    try:
        yield env
    finally:
        env.kill_workers()
        env._lp.connection.close()


@pytest.fixture
def fake_mp_key(monkeypatch):
    monkeypatch.setenv("MP_API_KEY", FAKE_MP_KEY)
    return FAKE_MP_KEY

