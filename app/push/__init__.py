"""Push delivery: the APNs client and the outbox worker."""
