"""`maas operator` / `python -m maas_operator`: runs the kopf operator.

Standalone by default (one replica; see the Helm chart's Recreate strategy): kopf's peering is not leader
election, and two operators of equal priority freeze each other. `--peering NAME` opts into it for a second,
standby replica.
"""

from __future__ import annotations

import argparse
import logging


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="maas operator", description="Run the MaaSJob operator (kopf).")
    scope = parse.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; a glob works)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)"
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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kopf logs every handled watch event at INFO; ours log what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    import kopf

    import maas_operator.handlers  # noqa: F401 - importing registers the handlers with kopf
    from maas_operator.settings import OperatorSettings

    liveness = (
        OperatorSettings.from_environment().liveness_endpoint if args.liveness is None else args.liveness
    )
    kopf.run(
        registry=kopf.get_default_registry(),
        standalone=args.peering is None,
        peering_name=args.peering,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness or None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
