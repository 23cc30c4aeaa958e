"""`maas operator` / `python -m maas_operator`: runs the kopf operator.

Standalone by default (one replica; see the Helm chart's Recreate strategy): kopf's peering is not leader
election, and two operators of equal priority freeze each other. `--peering NAME` opts into it for a second,
standby replica.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="maas operator", description="Run the MaaSJob operator (kopf).")
    scope = parse.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; default: $MAAS_WATCH_NAMESPACES, else every namespace)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace, whatever $MAAS_WATCH_NAMESPACES says",
    )
    parse.add_argument(
        "--peering", metavar="NAME", help="join kopf peering NAME instead of running standalone"
    )
    parse.add_argument(
        "--liveness",
        metavar="URL",
        default=None,
        help="liveness endpoint (default: $MAAS_LIVENESS_ENDPOINT or http://0.0.0.0:8080/healthz; '' disables)",
    )
    parse.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parse


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import kopf

    from maas_operator.settings import OperatorSettings, namespace_list

    settings = OperatorSettings.from_environment()
    if args.namespace:
        settings = dataclasses.replace(
            settings, watch_namespaces=namespace_list("--namespace", args.namespace)
        )
    elif args.all_namespaces:
        settings = dataclasses.replace(settings, watch_namespaces=())
    if args.liveness is not None:
        settings = dataclasses.replace(settings, liveness_endpoint=args.liveness)

    if settings.log_format == "json":
        # kopf's JSON formatter: one object per line, with the object a record is about under "object".
        kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON)
    else:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=TEXT_LOG_FORMAT)
    if not args.verbose:
        # kopf logs every handled watch event at INFO; ours log what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    import maas_operator.handlers  # noqa: F401 - importing registers the handlers with kopf

    kopf.run(
        registry=kopf.get_default_registry(),
        standalone=args.peering is None,
        peering_name=args.peering,
        clusterwide=not settings.watch_namespaces,
        namespaces=list(settings.watch_namespaces),
        liveness_endpoint=settings.liveness_endpoint or None,
        # The handlers read the settings from here, so flags and environment are resolved in one place.
        memo=kopf.Memo(settings=settings),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
