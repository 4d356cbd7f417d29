"""The `tuneops` command: crds, argocd, validate, render, run (the operator), worker, local and demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tuneops import __version__

if TYPE_CHECKING:
    from tuneops.config import OperatorConfig
    from tuneops.manifests import Document


def _load_documents(args: argparse.Namespace) -> list[Document] | None:
    """The objects named by -f (None after printing why they cannot be read)."""
    from tuneops.manifests import InputError, load

    try:
        return load(args.filename, recursive=args.recursive)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def _load_config(args: argparse.Namespace) -> OperatorConfig | None:
    """The operator config named by --config or $TUNEOPS_CONFIG (None after printing why it cannot be read)."""
    from tuneops.config import OperatorConfig

    try:
        return OperatorConfig.load(args.config)
    except (OSError, yaml.YAMLError, ValueError) as err:
        where = args.config or "$TUNEOPS_CONFIG"
        print(f"error: operator config {where}: {' '.join(str(err).split())}", file=sys.stderr)
        return None


def _check_documents(docs: list[Document], config: OperatorConfig, namespace: str, *, report_ok: bool) -> int:
    """Print what the operator would refuse about each tuneops object, its references followed within `docs`
    (and `ok` lines when asked); the number of objects refused. References to objects not in `docs` are
    noted, not refused."""
    from tuneops.api import KINDS, SpecError
    from tuneops.manifests import object_problems
    from tuneops.render.plan import Resolver, Resource, check_resource, parse_document

    found: list[tuple[Document, list[str], Resource | None]] = []
    for doc in docs:
        problems = object_problems(doc)
        resource = None
        if doc.kind in KINDS:
            try:
                resource = parse_document(doc.obj, namespace)
            except SpecError as err:
                problems += err.problems
        found.append((doc, problems, resource))
    resolver = Resolver([r for _, problems, r in found if r is not None and not problems], config)
    failed = 0
    for doc, problems, resource in found:
        notes: list[str] = []
        if resource is not None and not problems:
            findings = check_resource(resource, resolver)
            problems = [str(p) for p in findings.problems]
            notes = findings.notes
        if not problems and doc.kind not in KINDS:
            continue
        what = f"{doc.where}: {doc.kind or 'object'} {doc.name!r}"
        for note in notes:
            print(f"note: {what}: {note}", file=sys.stderr)
        if problems:
            failed += 1
            print(f"error: {what}:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
        elif report_ok:
            print(f"ok: {doc.where}: {doc.kind} {doc.name}")
    return failed


def cmd_crds(args: argparse.Namespace) -> int:
    from tuneops.api import crdgen

    if args.output == "-":
        sys.stdout.write("---\n".join(crdgen.dump(c) for c in crdgen.all_crds(cel=not args.no_cel)))
        return 0
    if args.no_cel:
        print(
            "error: --no-cel only with --output - (the committed CRDs keep their CEL rules)", file=sys.stderr
        )
        return 2
    for path in crdgen.write(Path(args.output)):
        print(f"wrote {path}")
    return 0


def cmd_argocd(args: argparse.Namespace) -> int:
    from tuneops import argocd

    if args.output == "-":
        sys.stdout.write(argocd.configmap())
        return 0
    for path in argocd.write(Path(args.output)):
        print(f"wrote {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load_config(args)
    docs = _load_documents(args)
    if config is None or docs is None:
        return 2
    return 2 if _check_documents(docs, config, args.namespace, report_ok=True) else 0


def cmd_render(args: argparse.Namespace) -> int:
    from tuneops.api import SpecError

    config = _load_config(args)
    if config is None:
        return 2
    docs = _load_documents(args)
    if docs is None or _check_documents(docs, config, args.namespace, report_ok=False):
        return 2
    from tuneops.render.plan import render_documents

    try:
        manifests = render_documents([d.obj for d in docs], config, namespace=args.namespace)
    except SpecError as err:
        print(f"error: {err.kind} {err.name!r}:", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False, width=120))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from tuneops.runner import run_operator

    return run_operator(
        namespaces=args.namespace or [],
        all_namespaces=args.all_namespaces,
        config_path=args.config,
        liveness=args.liveness,
        metrics_port=args.metrics_port,
        leader_election=args.leader_election,
        lease_namespace=args.leader_election_namespace,
        lease_name=args.leader_election_id,
    )


def _delegate(command: str, rest: list[str]) -> int:
    """`worker`, `local` and `demo` parse their own flags (argparse's REMAINDER refuses a leading --flag)."""
    if command == "worker":
        from tuneops.workers.cli import main as worker_main

        return int(worker_main(rest))
    if command == "local":
        from tuneops.local.cli import main as local_main

        return int(local_main(rest))
    from tuneops.local.demo import main as demo_main

    return int(demo_main(rest))


DELEGATED = ("worker", "local", "demo")


def _input_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        help="YAML or JSON file, or a folder of them (repeatable; - for stdin)",
    )
    p.add_argument(
        "-R", "--recursive", action="store_true", help="read the folders named by -f and their subfolders"
    )
    p.add_argument("-n", "--namespace", default="default", help="namespace of resources that name none")
    p.add_argument(
        "--config",
        help="operator config YAML (images, artifact root, allowCrossNamespaceRefs); default $TUNEOPS_CONFIG",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneops",
        description="From base model + LoRA adapter to a production endpoint, as Kubernetes resources.",
    )
    parser.add_argument("--version", action="version", version=f"tuneops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the API models")
    p.add_argument("--output", "-o", default="crds", help="directory to write to, or - for stdout")
    p.add_argument(
        "--no-cel",
        action="store_true",
        help="leave out the CEL rules, for Kubernetes older than 1.25 (the operator checks them itself)",
    )
    p.set_defaults(func=cmd_crds)

    p = sub.add_parser("argocd", help="write the Argo CD health checks (Lua) and their argocd-cm patch")
    p.add_argument(
        "--output",
        "-o",
        default="charts/tuneops/argocd",
        help="directory to write to, or - for the argocd-cm patch on stdout",
    )
    p.set_defaults(func=cmd_argocd)

    p = sub.add_parser(
        "validate",
        help="check tuneops resources in files as the operator would, references followed within the files",
    )
    _input_arguments(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print every manifest the operator would create for the resources")
    _input_arguments(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("run", help="run the operator against the cluster in KUBECONFIG or in-cluster config")
    p.add_argument("-n", "--namespace", action="append", help="namespace to watch (repeatable)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    p.add_argument("--config", help="operator config YAML; default $TUNEOPS_CONFIG")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port (0 disables)")
    p.add_argument(
        "--leader-election",
        action="store_true",
        help="act only while holding a coordination.k8s.io Lease, so replicas stand by (off: one instance only)",
    )
    p.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE") or "default",
        help="namespace of the Lease (default: $POD_NAMESPACE, else default)",
    )
    p.add_argument("--leader-election-id", default="tuneops", help="name of the Lease (default: tuneops)")
    # Accepted for scripts written for earlier releases: one instance without leader election is the default.
    p.add_argument("--standalone", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "worker", help="run a pipeline step (inside a Job): inspect, merge, quantize-*, evaluate"
    )
    p.add_argument("worker_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)

    p = sub.add_parser("local", help="the embedded default: a local control plane, operator and node")
    p.add_argument("local_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)

    p = sub.add_parser("demo", help="run the whole pipeline on this machine and query the endpoints")
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
