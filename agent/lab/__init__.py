"""Test and demo tooling, never imported by the agent's core: a private Prosody, the Monitor API emulator, the demo.

Installed with the ``lab`` extra (``pip install 'xmppmon[lab]'``); ``make demo`` and ``make test`` install it.
"""
