"""The sinks the sidecar relays notifications to: an HTTP webhook in batches, Alertmanager, XMPP."""
