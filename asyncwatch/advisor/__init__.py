"""The advisor: measures executors, concurrency limits, batches, queues, gates and the
loop's load, and turns them into worker-count, limit and batch-size changes.
"""
