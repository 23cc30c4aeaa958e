"""`python -m maas_operator`: the operator (see maas_operator.main)."""

from maas_operator.main import main

raise SystemExit(main())
