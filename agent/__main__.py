"""``python -m agent`` is the same as the ``xmppmon`` command."""

from agent.cli import main

raise SystemExit(main())
