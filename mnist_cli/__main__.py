"""`python -m mnist_cli ...` is the same as `mnist ...`."""

from mnist_cli.cli.main import main

raise SystemExit(main())
