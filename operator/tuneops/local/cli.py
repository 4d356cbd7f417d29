"""`tuneops local up|down|status|node`: the control plane, operator and local node on this machine."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneops import proctree, toolpaths
from tuneops.kube.client import CRD, NODE, ApiError, Kube
from tuneops.serving.process import free_port

REPO = Path(__file__).resolve().parents[3]

# What each cached tool costs to build on a 2-core machine the first time (measured), for the message.
TOOLS: dict[str, tuple[str, str]] = {
    "kube": ("scripts/build-kube.sh", "about 10 minutes"),
    "llamacpp": ("scripts/build-llamacpp.sh", "about 20-25 minutes"),
    "vllm": ("scripts/setup-vllm.sh", "about 3-7 minutes"),
}

Say = Callable[[str], None]
# The claim the operator writes artifacts to on the local cluster (its config's artifact_root).
ARTIFACT_CLAIM = "artifacts"


def default_root() -> Path:
    """Where `tuneops local` keeps its state: $TUNEOPS_LOCAL_DIR, else <cache>/local."""
    env = os.environ.get("TUNEOPS_LOCAL_DIR")
    return Path(env) if env else toolpaths.cache_dir() / "local"


def tool_missing(name: str) -> bool:
    from tuneops.local.controlplane import binaries_missing

    if name == "kube":
        return bool(binaries_missing())
    if name == "llamacpp":
        from tuneops.serving.llamacpp import llama_server_bin

        return not (
            llama_server_bin().is_file() and (toolpaths.llamacpp_dir() / "bin" / "llama-quantize").is_file()
        )
    return not toolpaths.vllm_python().is_file() or not (toolpaths.vllm_env_dir() / "bin" / "vllm").is_file()


LLAMACPP_PTH = "tuneops-llama-cpp.pth"


def llamacpp_linked(venv: Path) -> bool:
    """Whether `venv` has the .pth file that puts the cached llama-cpp-python bindings on sys.path (what
    scripts/build-llamacpp.sh writes; the GGUF quality gate imports `llama_cpp`)."""
    want = str(toolpaths.llamacpp_python_dir())
    lib = venv / "lib"
    for pth in lib.glob(f"python3*/site-packages/{LLAMACPP_PTH}") if lib.is_dir() else []:
        with contextlib.suppress(OSError):
            if pth.read_text().strip() == want:
                return True
    return False


def ensure_tools(names: list[str], say: Say = print, venv: Path | None = None) -> None:
    """Run the build script of every cached tool that is missing (each script is a no-op when cached).

    llama.cpp is also "missing" from a venv that is not linked to its Python bindings: the cache may have been
    filled from another clone, whose venv got the link, so this clone's venv (`venv`, default the running
    one) is linked here (the script only writes the .pth file when the tools are cached)."""
    venv = Path(sys.prefix) if venv is None else venv
    for name in names:
        script, cost = TOOLS[name]
        unlinked = name == "llamacpp" and not llamacpp_linked(venv)
        if not tool_missing(name) and not unlinked:
            continue
        path = REPO / script
        if not path.is_file():
            raise SystemExit(
                f"{name} is not installed and {path} is missing; run `make {name}` from a checkout"
            )
        argv = ["bash", str(path)]
        if name == "llamacpp":
            argv.append(str(venv))
        if tool_missing(name):
            say(f"==> {name} is not built yet: running {script} ({cost} on first run; cached afterwards)")
        else:
            say(f"==> linking the cached llama.cpp Python bindings into {venv} ({script})")
        started = time.monotonic()
        done = subprocess.run(argv, cwd=REPO, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{script} failed with exit code {done.returncode}")
        if name == "llamacpp" and not llamacpp_linked(venv):
            raise SystemExit(
                f"{script} ran but {venv} is still not linked to {toolpaths.llamacpp_python_dir()}"
            )
        say(f"    {name} ready in {time.monotonic() - started:.0f}s")


def _put_crd(api: Kube, crd: dict[str, Any]) -> None:
    current = api.get(CRD, None, crd["metadata"]["name"])
    if current is None:
        api.create(CRD, None, crd)
    else:
        version = current["metadata"]["resourceVersion"]
        api.replace(CRD, {**crd, "metadata": {**crd["metadata"], "resourceVersion": version}})


def _without_empty_defaults(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_empty_defaults(v) for k, v in value.items() if not (k == "default" and v == "")}
    if isinstance(value, list):
        return [_without_empty_defaults(v) for v in value]
    return value


@dataclass
class LocalCluster:
    """The embedded default: files under `root`, processes recorded in `root/state.json` and stopped by PID."""

    root: Path
    containers: bool = False
    """Run Pods as containers from the project's images (`make images`) instead of local processes."""
    kubeconfig: Path = field(init=False)
    node_root: Path = field(init=False)
    pvc_root: Path = field(init=False)
    state_path: Path = field(init=False)
    log_dir: Path = field(init=False)
    operator_config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        root = self.root = Path(self.root).resolve()
        self.kubeconfig = root / "controlplane" / "kubeconfig"
        self.node_root = root / "node"
        self.pvc_root = self.node_root / "pvc"
        self.state_path = root / "state.json"
        self.log_dir = root / "logs"
        self.operator_config_path = root / "operator.yaml"

    def state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def _save_state(self, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def endpoints(self) -> dict[str, str]:
        from tuneops.local.proxy import read_endpoints

        return read_endpoints(self.node_root)

    # ----- up -----------------------------------------------------------------------------------------

    def up(self, say: Say = print, die_with_parent: bool = False) -> None:
        """Start whatever is not running yet: control plane, CRDs, local node, operator."""
        from tuneops.local.controlplane import ControlPlane, ControlPlaneError

        ensure_tools(["kube"], say)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cp_dir = self.root / "controlplane"
        cp: ControlPlane | None = None
        with contextlib.suppress(ControlPlaneError):
            cp = ControlPlane.attach(cp_dir)
            if not cp.ready():
                cp.stop()
                cp = None
        if cp is None:
            say("==> starting etcd, kube-apiserver and kube-controller-manager on 127.0.0.1")
            started = time.monotonic()
            cp = ControlPlane(data_dir=cp_dir, keep_data=True, die_with_parent=die_with_parent)
            cp.start()
            say(f"    API server {cp.server_url} ready in {time.monotonic() - started:.1f}s")
        self._install_crds(say)
        state = self.state()
        if self.containers:
            self._check_images(say)
        if bool((state.get("node") or {}).get("containers")) != self.containers:
            # The other mode runs: its node and operator (whose config names the images) make way.
            self._stop_processes(state, say)
        self._write_operator_config()
        node = state.get("node") or {}
        if not proctree.matches(int(node.get("pid") or 0), "tuneops.local.cli node"):
            state["node"] = self._spawn(
                "node",
                [sys.executable, "-m", "tuneops.local.cli", "node", "--root", str(self.node_root),
                 "--kubeconfig", str(self.kubeconfig), *(["--containers"] if self.containers else [])],
                {},
                die_with_parent,
            )  # fmt: skip
            state["node"]["containers"] = self.containers
            mode = "Pods as containers" if self.containers else "Pods as processes"
            say(
                f"==> local node started, {mode} (pid {state['node']['pid']}, log {self.log_dir / 'node.log'})"
            )
        op = state.get("operator") or {}
        if not proctree.matches(int(op.get("pid") or 0), "tuneops.cli run"):
            liveness, metrics = free_port(), free_port()
            state["operator"] = self._spawn(
                "operator",
                [sys.executable, "-m", "tuneops.cli", "run", "-A",
                 f"--liveness=http://127.0.0.1:{liveness}/healthz", f"--metrics-port={metrics}"],
                {"TUNEOPS_CONFIG": str(self.operator_config_path), "TUNEOPS_POLL_SECONDS": "1",
                 "TUNEOPS_RESYNC_SECONDS": "15"},
                die_with_parent,
            )  # fmt: skip
            state["operator"]["metrics"] = f"http://127.0.0.1:{metrics}/metrics"
            say(f"==> operator started (pid {state['operator']['pid']}, log {self.log_dir / 'operator.log'})")
        self._save_state(state)
        self._wait_node_ready()

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], die_with_parent: bool
    ) -> dict[str, Any]:
        full_env = dict(os.environ)
        full_env.update({"KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1", **env})
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=self.root,
                start_new_session=True, preexec_fn=proctree.die_with_parent if die_with_parent else None,
            )  # fmt: skip
        return {"pid": proc.pid, "log": str(log_path), "argv": argv}

    def _api(self) -> Kube:
        return Kube.from_kubeconfig(self.kubeconfig, user_agent="tuneops-local")

    def _install_crds(self, say: Say) -> None:
        from tuneops.api import crdgen

        api = self._api()
        names = []
        for crd in crdgen.all_crds():
            name = crd["metadata"]["name"]
            names.append(name)
            # Create or replace, as `kubectl apply` does: 1.20's server-side apply turns "" defaults into null.
            try:
                _put_crd(api, crd)
            except ApiError as err:
                if err.status != 422 or 'default: Invalid value: "null"' not in str(err):
                    raise
                # This API server build reads an empty-string schema default as null and refuses it; those
                # defaults only fill condition fields the operator always writes, so install without them.
                say(
                    f"    note: the API server refused empty-string defaults in {name}; installing without them"
                )
                _put_crd(api, _without_empty_defaults(crd))
        deadline = time.monotonic() + 60
        for name in names:
            while True:
                crd = api.get(CRD, None, name) or {}
                conds = (crd.get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"CRD {name} not established after 60s")
                time.sleep(0.2)
        say(f"==> CRDs installed: {', '.join(sorted(names))}")

    def _write_operator_config(self) -> None:
        # PVCs are mounted in Pods where the local node keeps the claims, so a path the operator hands a
        # server at runtime (an adapter to hot-load) is the same path inside and outside the "container".
        config: dict[str, Any] = {
            "pvc_mount_root": str(self.pvc_root),
            "artifact_root": f"pvc://{ARTIFACT_CLAIM}",
        }
        if self.containers:
            # Containers see claims where a cluster mounts them (the default, /mnt/pvc): every path the operator
            # hands a server is one inside its container. (The node's own folder lies under /root, which the
            # Pods' user cannot enter there.)
            del config["pvc_mount_root"]
            config["images"] = container_images()
        self.operator_config_path.write_text(yaml.safe_dump(config, sort_keys=True))

    def _check_images(self, say: Say) -> None:
        from tuneops.local.engine import Engine

        engine = Engine.default()
        if not engine.available():
            raise SystemExit("container mode needs podman and runc: run `make images` (it installs them)")
        missing = [i for i in sorted(set(container_images().values())) if engine.image_id(i) is None]
        if missing:
            raise SystemExit(f"container mode: images not built yet: {', '.join(missing)}; run `make images`")
        say("==> container mode: the project's images are in local storage")

    def _stop_processes(self, state: dict[str, Any], say: Say) -> None:
        for name, marker in (("operator", "tuneops.cli run"), ("node", "tuneops.local.cli node")):
            pid = int((state.get(name) or {}).get("pid") or 0)
            if pid and proctree.matches(pid, marker):
                say(f"==> stopping {name} (pid {pid}) to change mode")
                proctree.stop(pid, 60.0, functools.partial(proctree.matches, pid, marker))
            state.pop(name, None)

    def _wait_node_ready(self, timeout: float = 60.0) -> None:
        api = self._api()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = api.get(NODE, None, "tuneops-local") or {}
            conds = (node.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                return
            pid = int((self.state().get("node") or {}).get("pid") or 0)
            if not proctree.matches(pid, "tuneops.local.cli node"):
                tail = (self.log_dir / "node.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"the local node exited; end of {self.log_dir / 'node.log'}:\n{tail}")
            time.sleep(0.3)
        raise SystemExit("the local node did not register within 60s")

    # ----- down and status ----------------------------------------------------------------------------

    def down(self, purge: bool = False, say: Say = print) -> None:
        from tuneops.local.controlplane import ControlPlane, ControlPlaneError

        state = self.state()
        for name, marker in (("operator", "tuneops.cli run"), ("node", "tuneops.local.cli node")):
            pid = int((state.get(name) or {}).get("pid") or 0)
            if pid and proctree.matches(pid, marker):
                say(f"==> stopping {name} (pid {pid})")
                # The node stops every Pod process it started before it exits.
                grace = 60.0 if name == "node" else 20.0
                proctree.stop(pid, grace, functools.partial(proctree.matches, pid, marker))
        with contextlib.suppress(ControlPlaneError):
            cp = ControlPlane.attach(self.root / "controlplane")
            say("==> stopping the control plane")
            cp.stop()
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        if purge:
            shutil.rmtree(self.root, ignore_errors=True)
            say(f"==> removed {self.root}")

    def status(self) -> dict[str, Any]:
        from tuneops.local.controlplane import ControlPlane, ControlPlaneError

        state = self.state()
        out: dict[str, Any] = {"root": str(self.root), "kubeconfig": str(self.kubeconfig)}
        try:
            cp = ControlPlane.attach(self.root / "controlplane")
            out["controlplane"] = {"server": cp.server_url, "ready": cp.ready(), "pids": cp.pids()}
        except ControlPlaneError:
            out["controlplane"] = {"ready": False}
        for name, marker in (("operator", "tuneops.cli run"), ("node", "tuneops.local.cli node")):
            pid = int((state.get(name) or {}).get("pid") or 0)
            out[name] = {
                "pid": pid,
                "running": bool(pid) and proctree.matches(pid, marker),
                "log": state.get(name, {}).get("log"),
            }
        out["endpoints"] = self.endpoints()
        return out


def container_images() -> dict[str, str]:
    """The operator's images in container mode: the project's own, as `make images` tags them (the vLLM
    server is its CPU build, llama-server comes from the gguf image)."""
    from tuneops.config import Images

    images = Images()
    registry = images.worker.rsplit("/", 1)[0]
    version = images.worker.rsplit(":", 1)[1]
    return {
        "worker": images.worker,
        "gguf": images.gguf,
        "vllm": f"{registry}/vllm-cpu:{version}",
        "llamacpp": images.gguf,
    }


def cluster_url(key: str, domain: str = "cluster.local") -> str:
    """The in-cluster URL of an endpoint key `namespace/service/port` (what status' URL column shows, which this
    machine cannot resolve: the local node serves no cluster DNS; use the local URL beside it)."""
    ns, service, port = key.split("/", 2)
    return f"http://{service}.{ns}.svc.{domain}:{port}"


def run_node(args: argparse.Namespace) -> int:
    """The local node in the foreground until SIGTERM/SIGINT (what `tuneops local up` starts)."""
    from tuneops.config import Images
    from tuneops.local.node import LocalNode, NodeConfig
    from tuneops.local.proxy import ServiceProxy
    from tuneops.local.runtimes import load_runtimes

    logging.basicConfig(
        level=os.environ.get("TUNEOPS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    images = Images()
    extra = {"tuneops": [images.worker, images.gguf], "vllm": [images.vllm], "llamacpp": [images.llamacpp]}
    engine = None
    if args.containers:
        from tuneops.local.engine import Engine

        engine = Engine.default()
        if not engine.available():
            raise SystemExit("--containers needs podman and runc (`make images` installs them)")
    config = NodeConfig(
        engine=engine,
        root=Path(args.root),
        name=args.name,
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        runtimes=load_runtimes(Path(args.runtimes) if args.runtimes else None, extra),
        probe_period_cap_s=args.probe_period_cap,
    )
    node = LocalNode(config)
    proxy = ServiceProxy(node)

    def on_signal(signum: int, _frame: Any) -> None:
        node.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node.start()
    proxy.start()
    try:
        node.wait()
    finally:
        proxy.stop()
        node.stop(grace=float(args.grace))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneops local", description="the embedded default on this machine")
    parser.add_argument(
        "--root", type=Path, default=None, help="state folder (default $TUNEOPS_LOCAL_DIR or <cache>/local)"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="start the control plane, the local node and the operator")
    p.add_argument(
        "--containers",
        action="store_true",
        default=os.environ.get("TUNEOPS_CONTAINERS", "") not in ("", "0"),
        help="run Pods as containers from the project's images (`make images`); default: local processes",
    )
    p = sub.add_parser("down", help="stop everything `up` started (by PID)")
    p.add_argument(
        "--purge", action="store_true", help="also delete the state folder (cluster data, claims, logs)"
    )
    p = sub.add_parser("status", help="what runs, where, and the endpoint URLs")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p = sub.add_parser("node", help="run the local node in the foreground (started by `up`)")
    p.add_argument("--root", dest="node_root", type=Path, required=True)
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--name", default="tuneops-local")
    p.add_argument("--runtimes", default=os.environ.get("TUNEOPS_LOCAL_RUNTIMES"), help="image mapping YAML")
    p.add_argument("--probe-period-cap", type=float, default=2.0, help="probe at least this often (seconds)")
    p.add_argument("--grace", type=float, default=20.0, help="seconds Pods get to stop when the node stops")
    p.add_argument("--containers", action="store_true", help="run each container with podman from its image")
    args = parser.parse_args(argv)
    if args.cmd == "node":
        args.root = args.node_root
        return run_node(args)
    cluster = LocalCluster(args.root or default_root(), containers=bool(getattr(args, "containers", False)))
    if args.cmd == "up":
        cluster.up()
        print(f"\nexport KUBECONFIG={cluster.kubeconfig}")
        print("kubectl get nodes,pods -A; tuneops local status; tuneops local down")
        return 0
    if args.cmd == "down":
        cluster.down(purge=args.purge)
        return 0
    info = cluster.status()
    if args.output == "json":
        print(json.dumps(info, indent=2))
        return 0
    cp = info["controlplane"]
    print(f"root:          {info['root']}")
    print(f"control plane: {'ready at ' + cp['server'] if cp.get('ready') else 'not running'}")
    for name in ("node", "operator"):
        st = info[name]
        print(f"{name + ':':14} {'running, pid ' + str(st['pid']) if st['running'] else 'not running'}")
    for key, url in sorted(info["endpoints"].items()):
        print(f"endpoint:      {key}: {url}/v1 (from this machine); {cluster_url(key)}/v1 (in the cluster)")
    print(f"\nexport KUBECONFIG={info['kubeconfig']}")
    return 0 if cp.get("ready") else 1


if __name__ == "__main__":
    raise SystemExit(main())
