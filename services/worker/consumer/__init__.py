"""The batch consumer that runs beside each worker: a Celery worker on its
pool's batch queue that sends the rows of each chunk task to its own worker
over gRPC, at batch priority, into the capacity online work leaves idle.

It is a process of its own (`python -m services.worker.consumer`), started
next to each worker by `headrace up`: Celery's worker owns its main thread,
signals and restarts, and a consumer killed or restarted takes no online
traffic down with it.
"""
