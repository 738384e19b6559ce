"""`python -m mnist_cli ...` is the same as `mnist ...`."""

from mnist_cli.cli import main

raise SystemExit(main())
