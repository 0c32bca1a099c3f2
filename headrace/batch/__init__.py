"""Batch jobs, as the scheduler and the consumers beside the workers share
them: the OpenAI Batch formats (input rows, output lines), the job store in
Redis, and the Celery queue (one per model pool) with its task names.

    scheduler.SubmitBatch -> input_rows.parse_input -> store.create_job
        -> queue.ChunkPublisher (one task per chunk: batch id + chunk index)
    consumer (services/worker/consumer) -> store.begin_attempt -> worker.Generate
        -> store.record (written once per row) -> the job completes itself

The design, limits and guarantees: docs/batch.md.
"""
