"""Jobs on the agent: the runner (capacity, timeouts, cancels, the result stream), the work
a job does in its thread (open the seal, call the source), the producer hand-off, a job as
held until the relay acknowledges it (``job``), the spool, the worker threads, deadlines
and the job-opening keys."""
