"""`python -m deployer apply|verify`: the entry point the Pulumi Command resources call."""

from deployer.cli import main

raise SystemExit(main())
