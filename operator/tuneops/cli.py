"""The `tuneops` command: crds, argocd, validate, render, run (the operator), worker, local and demo."""

from __future__ import annotations

import argparse
import contextlib
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
    unchecked: list[str] = []
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
            unchecked += [
                f"note: {what}: not checked (needs the cluster): {item}" for item in findings.unchecked
            ]
    # What only the cluster can tell, once everything else passes (beside refusals it would be noise).
    for line in unchecked if not failed else []:
        print(line, file=sys.stderr)
    return failed


def _warn_nothing_to_check(args: argparse.Namespace, docs: list[Document]) -> int:
    """Warn about each file with no tuneops object in it; the number of tuneops objects in the input."""
    from tuneops.api import KINDS
    from tuneops.manifests import InputError, files, object_problems

    def file_of(where: str) -> str:
        return where.rsplit("#", 1)[0]

    # An object the API server would refuse (a misspelled kind, none) is something to check: it is an error.
    counted = {file_of(d.where) for d in docs if d.kind in KINDS or object_problems(d)}
    with contextlib.suppress(InputError):
        for path in files(args.filename, recursive=args.recursive):
            name = "stdin" if path == "-" else path
            if name not in counted:
                others = sorted({d.kind or "object" for d in docs if file_of(d.where) == name})
                holds = f" (it holds {', '.join(others)})" if others else ""
                print(
                    f"warning: {name}: no FineTunedModel, QuantizationJob or InferenceService to check{holds}",
                    file=sys.stderr,
                )
    return sum(1 for d in docs if d.kind in KINDS or object_problems(d))


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
    checked = _warn_nothing_to_check(args, docs)
    if _check_documents(docs, config, args.namespace, report_ok=True):
        return 2
    if not checked:
        print("error: nothing to check: the input holds no tuneops objects", file=sys.stderr)
        return 1
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from tuneops.api import SpecError

    config = _load_config(args)
    if config is None:
        return 2
    docs = _load_documents(args)
    if docs is None:
        return 2
    checked = _warn_nothing_to_check(args, docs)
    if _check_documents(docs, config, args.namespace, report_ok=False):
        return 2
    if not checked:
        print("error: nothing to render: the input holds no tuneops objects", file=sys.stderr)
        return 1
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
    try:
        if command == "local":
            from tuneops.local.cli import main as local_main

            return int(local_main(rest))
        from tuneops.local.demo import main as demo_main
    except ModuleNotFoundError as err:
        if err.name is None or not err.name.startswith("tuneops.local"):
            raise
        # The operator image ships the operator only: the embedded cluster is a development tool.
        print(
            f"tuneops {command}: the embedded cluster is not part of this installation "
            "(the operator image leaves it out); install tuneops from a clone to use it",
            file=sys.stderr,
        )
        return 2
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


VALIDATE_DESCRIPTION = """\
Check FineTunedModels, QuantizationJobs and InferenceServices in files as the operator would, before they are
applied: the schema (every offending field named), the operator config's allow-lists (images, ServiceAccounts,
PriorityClasses, arguments, env, Secrets), references between the resources (followed within the files), and
what vLLM or llama.cpp would refuse (parallelism, adapters). Nothing is sent to a cluster.

What files cannot tell is listed under each resource as `not checked (needs the cluster)`: that claims and
Secrets exist, the rank and base model of an adapter given by uri, Hub revisions. A reference to a resource
not in the files is noted and what depends on it skipped. A file with no tuneops object gets a warning."""

VALIDATE_EPILOG = """\
exit status: 0 every resource passes, 1 nothing to check, 2 a resource is refused or the input is unreadable

examples:
  tuneops validate -f examples/quickstart.yaml
  tuneops validate -f examples/ --config operator.yaml     # the operator config your cluster runs
  tuneops validate -R -f manifests/ -n team-a              # folders and subfolders, resources in team-a
  kustomize build overlays/prod | tuneops validate -f -    # from stdin"""

RENDER_DESCRIPTION = """\
Print, as YAML, every manifest the operator would create for the tuneops resources in the files: worker Jobs
(inspect, merge, quantize, evaluate), Deployments or LeaderWorkerSets, Services, ConfigMaps, PodDisruption-
Budgets and the rest. The resources are validated first (as `tuneops validate` does); nothing is printed when
one is refused. Digests and adapter facts that only the Jobs find are left out; owner UIDs are stand-ins."""

RENDER_EPILOG = """\
examples:
  tuneops render -f examples/quickstart.yaml
  tuneops render -f examples/multi-lora.yaml --config operator.yaml | kubectl apply --dry-run=server -f -
  tuneops render -f examples/ -n team-a > rendered.yaml"""


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
        description=VALIDATE_DESCRIPTION,
        epilog=VALIDATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _input_arguments(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "render",
        help="print every manifest the operator would create for the resources",
        description=RENDER_DESCRIPTION,
        epilog=RENDER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
