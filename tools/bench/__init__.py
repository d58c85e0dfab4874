"""`make bench`: latency, throughput and cost per run of the real local stack, and its report."""
