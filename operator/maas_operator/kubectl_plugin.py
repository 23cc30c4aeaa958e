"""`kubectl maas`: the kubectl plugin (the `kubectl-maas` command on PATH) for MaaSJobs on a live cluster.

    kubectl maas plan -f job.yaml        preview the split and placement against the cluster's nodes and free GPUs
    kubectl maas status NAME             conditions, the plan, worker -> node and pod, progress
    kubectl maas logs NAME [--stage S] [--replica R] [-f] [--tail N]
                                         logs of the job's workers, picked by the operator's labels and plan

Flags as kubectl's: --kubeconfig, --context, -n/--namespace, -o table|json|yaml, -v 6 (print each request).
kubectl passes no flags of its own to a plugin, so they go after `maas`. Uses the official `kubernetes` client
(`pip install 'maas-operator[kubectl]'`); never imports kopf or torch. The decisions and the printing are
the operator's own pure functions (`kubectl_views`, the planner, `world`), so a preview plans exactly as the
operator would.

Exit codes: 0 done; 1 an API error, a job or worker not found, or logs that could not be read; 2 invalid
input; 3 (plan) the job is valid but does not fit the cluster now.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

from maas_api import ManifestError, parse_maasjob
from maas_api.job import GROUP, PLURAL, VERSION

from maas_operator import names
from maas_operator.cli import guard_broken_pipe
from maas_operator.kubectl_views import (
    OUTPUTS,
    SelectionError,
    cluster_view,
    dump,
    job_status,
    log_prefix,
    log_selector,
    render_status,
    select_workers,
    stored_plan,
)
from maas_operator.planner import PlanError, Unschedulable, build_plan
from maas_operator.planner.cli import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNSCHEDULABLE,
    InputError,
    load_job_manifest,
    render_table,
)
from maas_operator.reconcile import previous_placement
from maas_operator.world import WORKER_CONTAINER

EXIT_ERROR = 1
PROG = "kubectl maas"
PAGE_SIZE = 500
"""Objects per List page (big clusters are read in pages, as kubectl does)."""
TRACE_LEVEL = 6
"""`-v 6` prints each request with its answer's status, as kubectl's -v=6 does."""


class CommandError(Exception):
    """An error to print as `error: ...` with exit code 1."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise InputError(message)


def _connection_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """kubectl's connection and output flags; on sub-commands they only override what was given before."""
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--kubeconfig", default=default(None), help="kubeconfig file (default: $KUBECONFIG)")
    parser.add_argument("--context", default=default(None), help="kubeconfig context (default: current)")
    parser.add_argument(
        "-n", "--namespace", default=default(None), help="namespace (default: the context's, else default)"
    )
    parser.add_argument(
        "-v", "--v", dest="verbosity", type=int, default=default(0), help="6: print each API request"
    )


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog=PROG, description="MaaSJobs on a live cluster (a kubectl plugin).")
    _connection_flags(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

    plan = commands.add_parser("plan", help="preview the split and placement against the live cluster")
    plan.add_argument("-f", "--filename", required=True, help="MaaSJob manifest (YAML), or - for stdin")
    plan.add_argument("-o", "--output", choices=OUTPUTS, default="table")

    status = commands.add_parser("status", help="conditions, plan, worker -> node and progress of a job")
    status.add_argument("name", help="MaaSJob name")
    status.add_argument("-o", "--output", choices=OUTPUTS, default="table")

    logs = commands.add_parser("logs", help="logs of a job's workers (all, or one stage and/or replica)")
    logs.add_argument("name", help="MaaSJob name")
    logs.add_argument("--stage", type=int, help="only the workers that run this model stage")
    logs.add_argument("--replica", type=int, help="only the workers of this data-parallel replica")
    logs.add_argument("-f", "--follow", action="store_true", help="stream the logs")
    logs.add_argument("--tail", type=int, default=-1, help="lines of recent log to show (-1: all)")
    logs.add_argument("-p", "--previous", action="store_true", help="the previous container's logs")
    logs.add_argument("--timestamps", action="store_true", help="prefix each line with its time")
    logs.add_argument(
        "--prefix", action="store_true", help="prefix each line with its pod (always with several pods)"
    )
    for command in (plan, status, logs):
        _connection_flags(command, suppress=True)
    return parser


# -- the API server ---------------------------------------------------------------------------------------


def _trace(request: Callable[..., Any], stream: TextIO) -> Callable[..., Any]:
    """Wraps the REST client's request: prints `METHOD URL STATUS in N ms` for each request."""
    from kubernetes.client.exceptions import ApiException

    @functools.wraps(request)
    def traced(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        # Older clients pass the query apart from the URL.
        query = kwargs.get("query_params")
        shown = f"{url}?{urllib.parse.urlencode(query)}" if query else url
        started = time.monotonic()
        try:
            answer = request(method, url, *args, **kwargs)
        except ApiException as error:
            print(f"{method} {shown} {error.status} in {_ms(started)} ms", file=stream)
            raise
        print(f"{method} {shown} {answer.status} in {_ms(started)} ms", file=stream)
        return answer

    return traced


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _api_message(error: Any) -> str:
    """The API server's own words (its Status message) with the HTTP status."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return f"HTTP {error.status}: {message or error.reason}"


class Cluster:
    """The few reads `kubectl maas` makes, answered as plain dicts (what the operator's pure functions take).

    Every call asks for the raw answer (`_preload_content=False`): the typed models are slow on big lists, and
    the operator reads the same JSON."""

    def __init__(self, args: argparse.Namespace) -> None:
        try:
            from kubernetes import client, config
        except ImportError as error:
            raise CommandError(
                "kubectl-maas needs the kubernetes client: pip install 'maas-operator[kubectl]'"
            ) from error
        try:
            api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=args.kubeconfig, context=args.context, persist_config=False
            )
            contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=args.kubeconfig
            )
        except config.ConfigException as error:
            raise CommandError(f"cannot load the kubeconfig: {error}") from error
        chosen = next((c for c in contexts if c["name"] == args.context), active) if args.context else active
        self.namespace: str = args.namespace or (chosen.get("context") or {}).get("namespace") or "default"
        if args.verbosity >= TRACE_LEVEL:
            api.rest_client.request = _trace(api.rest_client.request, sys.stderr)
        self.host = str(api.configuration.host)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def raw(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The raw answer of one API call (ApiException for an HTTP error); CommandError when no server
        answers."""
        from urllib3.exceptions import HTTPError

        try:
            return method(*args, **kwargs, _preload_content=False)
        except (HTTPError, OSError) as error:
            raise CommandError(f"cannot reach the API server at {self.host}: {error}") from error

    def read(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        """One object as a dict; None when it is not found."""
        from kubernetes.client.exceptions import ApiException

        try:
            document: dict[str, Any] = json.loads(self.raw(method, *args, **kwargs).data)
        except ApiException as error:
            if error.status == 404:
                return None
            raise CommandError(_api_message(error)) from error
        return document

    def list_all(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Every item of a collection, page by page."""
        items: list[dict[str, Any]] = []
        token = None
        while True:
            page = self.read(method, *args, **kwargs, limit=PAGE_SIZE, _continue=token)
            if page is None:
                raise CommandError("the collection was not found (is the MaaSJob CRD installed?)")
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return items

    def job(self, name: str) -> dict[str, Any]:
        job = self.read(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name
        )
        if job is None:
            raise CommandError(f'maasjobs.{GROUP} "{name}" not found in namespace "{self.namespace}"')
        return job

    def plan_configmap(self, job: str, namespace: str) -> dict[str, Any] | None:
        return self.read(self.core.read_namespaced_config_map, names.plan_configmap_name(job), namespace)

    def job_pods(self, job: str, replica: int | None = None) -> list[dict[str, Any]]:
        return self.list_all(
            self.core.list_namespaced_pod, self.namespace, label_selector=log_selector(job, replica)
        )

    def log(self, pod: str, args: argparse.Namespace) -> Any:
        """The worker container's log of one pod (`GET .../pods/POD/log`), as a stream."""
        return self.raw(
            self.core.read_namespaced_pod_log,
            pod,
            self.namespace,
            container=WORKER_CONTAINER,
            follow=args.follow or None,
            tail_lines=args.tail if args.tail >= 0 else None,
            previous=args.previous or None,
            timestamps=args.timestamps or None,
        )


# -- the commands -----------------------------------------------------------------------------------------


def _plan(args: argparse.Namespace, out: TextIO) -> int:
    job = parse_maasjob(load_job_manifest(args.filename))
    namespace = job.metadata.namespace
    if namespace and args.namespace and namespace != args.namespace:
        raise InputError(
            f'the namespace from the provided object "{namespace}" does not match the namespace'
            f' "{args.namespace}": pass --namespace={namespace} or leave it out'
        )
    cluster = Cluster(args)
    namespace = namespace or cluster.namespace
    name = str(job.metadata.name)
    # What the operator's cache holds: every node, and the GPUs that every pod but the job's own holds.
    view = cluster_view(
        cluster.list_all(cluster.core.list_node),
        cluster.list_all(cluster.core.list_pod_for_all_namespaces),
        f"{namespace}/{name}",
    )
    existing = stored_plan(cluster.plan_configmap(name, namespace))
    plan = build_plan(
        job.spec,
        nodes=list(view.nodes),
        used_gpus=view.used_gpus,
        previous=previous_placement(existing, view.nodes),
        name=name,
        namespace=namespace,
    )
    if args.output != "table":
        out.write(dump(plan.to_wire(), args.output))
        return EXIT_OK
    out.write(view.describe() + "\n")
    if existing is not None:
        out.write(
            f"The job exists: its {len(existing.workers)} worker(s) count as free, and stay on their nodes"
            " where they fit.\n"
        )
    out.write("\n" + render_table(plan))
    return EXIT_OK


def _status(args: argparse.Namespace, out: TextIO) -> int:
    cluster = Cluster(args)
    job = cluster.job(args.name)
    plan = stored_plan(cluster.plan_configmap(args.name, cluster.namespace))
    view = job_status(job, plan, cluster.job_pods(args.name))
    out.write(dump(view, args.output) if args.output != "table" else render_status(view, datetime.now(UTC)))
    return EXIT_OK


def _lines(response: Any) -> Iterator[str]:
    """A streamed answer, line by line (a last line without a newline included)."""
    buffered = b""
    for chunk in response.stream(amt=None):
        buffered += chunk
        *complete, buffered = buffered.split(b"\n")
        for line in complete:
            yield (line + b"\n").decode(errors="replace")
    if buffered:
        yield buffered.decode(errors="replace")


def _logs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    cluster = Cluster(args)
    job = cluster.job(args.name)
    plan = stored_plan(cluster.plan_configmap(args.name, cluster.namespace))
    workers = select_workers(job, plan, args.stage, args.replica)
    pods = {str(p["metadata"]["name"]): p for p in cluster.job_pods(args.name, args.replica)}
    failures = [
        f"worker {w.name} has no pod now (the operator makes it when its gang starts)"
        for w in workers
        if w.name not in pods
    ]
    present = [w.name for w in workers if w.name in pods]
    prefixed = args.prefix or len(present) > 1
    lock = threading.Lock()

    def copy(pod: str) -> None:
        prefix = log_prefix(pod, WORKER_CONTAINER) if prefixed else ""
        try:
            response = cluster.log(pod, args)
        except ApiException as error:
            node = (pods[pod].get("spec") or {}).get("nodeName") or "none yet"
            with lock:
                failures.append(
                    f"pod {pod} (node {node}): no logs from the API server: {_api_message(error)}"
                )
            return
        try:
            for line in _lines(response):
                with lock:
                    out.write(prefix + line)
                    out.flush()
        except BrokenPipeError:  # our reader left (`| head`): main() ends quietly
            raise
        except (HTTPError, OSError) as error:  # the stream broke off (API server gone, connection reset)
            with lock:
                failures.append(f"pod {pod}: the log stream broke off: {error}")
        finally:
            response.release_conn()

    # Several followed pods stream at once; otherwise one after the other, in worker order.
    if args.follow and len(present) > 1:
        threads = [threading.Thread(target=copy, args=(pod,), daemon=True) for pod in present]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for pod in present:
            copy(pod)
    for failure in failures:
        print(f"error: {failure}", file=err)
    return EXIT_ERROR if failures else EXIT_OK


def run(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """The plugin, writing to `out` and `err`; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
        if args.command == "plan":
            return _plan(args, out)
        if args.command == "status":
            return _status(args, out)
        return _logs(args, out, err)
    except InputError as error:
        print(f"{PROG}: {error}", file=err)
        return EXIT_INVALID
    except ManifestError as error:
        print(f"{PROG}: {error}", file=err)
        return EXIT_INVALID
    except PlanError as error:
        print(f"{PROG}: invalid: {error}", file=err)
        return EXIT_INVALID
    except Unschedulable as error:
        print(f"{PROG}: cannot place now: {error}", file=err)
        return EXIT_UNSCHEDULABLE
    except (CommandError, SelectionError) as error:
        print(f"error: {error}", file=err)
        return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    return guard_broken_pipe(lambda: run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr))


if __name__ == "__main__":
    raise SystemExit(main())
