"""Jobs: their lifecycle (a pure table), the queue that applies it, results."""
