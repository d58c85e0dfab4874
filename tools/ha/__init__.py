"""`make serve-ha`: the service on three loopback hosts, and the steady load the HA tests run through faults."""
