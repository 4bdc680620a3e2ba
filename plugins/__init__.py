"""Built-in xmppmon plugins: slixmpp ``BasePlugin`` subclasses that turn stanzas into records."""
